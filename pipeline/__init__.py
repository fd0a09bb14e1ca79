"""ddss-pipeline: few-step sampling for pretrained diffusion models."""
