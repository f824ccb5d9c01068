"""Built-in default: a synthetic shapes dataset and a small milesial UNet trained on it by this project."""
