"""`vpipe-run`: one config file drives profile -> plan -> gen -> train, through each command's
own entry point. It sits above the four parts (docs/architecture.md)."""
