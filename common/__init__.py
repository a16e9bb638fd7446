"""What more than one vpipe part needs, and none of them owns: the errors and the command-line
boundary (errors, cli); reading and writing vpipe's files (records, yamlfile, paths) and one
run per run directory (runlock); the model file and its capture into a graph (modelfile,
capture, export_capture); the stage-file contract (stages); the schedules; the optimizers
(their names and facts: optimizers; their updates: optim); CPU memory counting (memory); and
plots and byte counts for people (plotting, units). Only capture, export_capture, memory,
modelfile, optim and stages import torch: the planner and the commands' `--help` use the rest."""
