"""Training stages, one file each; `trainers.app.STAGES` maps `stage=<name>` to the class."""
