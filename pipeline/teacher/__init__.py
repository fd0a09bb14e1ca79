"""The teacher: a class-conditional eps-prediction diffusion model with classifier-free guidance.

model.py loads a trained one for sampling (`load_teacher`); train.py trains one (`train_teacher`).
"""
