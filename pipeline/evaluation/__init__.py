"""Evaluation without Ray and without knowing any method: samples of any index range, their
features and KID/FD, the same whichever worker computes them.

spec.py: what is evaluated (EvalSpec, Plan) and the one sample-index convention;
features.py: feature spaces; evaluator.py: generation, merging and metrics;
problems.py: the models and references evaluated (a teacher, a Gaussian mixture).
"""
from pipeline.evaluation.evaluator import Evaluator, check_made_for, evaluate_local, merge, metrics, preflight, resolve
from pipeline.evaluation.features import data_features, features_in_batches, pixel_features
from pipeline.evaluation.problems import AnalyticModel, Problem, analytic_problem, sampling_problem, teacher_problem
from pipeline.evaluation.spec import EvalSpec, Plan, RangeResult, ranges, sample_inputs, sample_keys, split_sampler

__all__ = ["AnalyticModel", "EvalSpec", "Evaluator", "Plan", "Problem", "RangeResult", "analytic_problem",
           "check_made_for", "data_features", "evaluate_local", "features_in_batches", "merge", "metrics",
           "pixel_features", "preflight", "ranges", "resolve", "sample_inputs", "sample_keys", "sampling_problem",
           "split_sampler", "teacher_problem"]
