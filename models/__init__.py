"""Reference models that follow vpipe's model-file contract: gpt, bert, resnet, vgg, mlp, and
widehead (an imbalanced one)."""
