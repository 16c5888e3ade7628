"""Bad inputs from issue 15: mismatched states, errors that name what the user wrote,
step counts beyond int32, eps=0, and MultiSteps against Optax."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import jaxopt_zoo as jz

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0])}


# --- a state built by another optimizer -------------------------------------------------------


def test_state_of_a_constant_rate_given_to_a_scheduled_one_says_what_differs():
    state = jz.adamw(1e-3).init(PARAMS)
    tx = jz.adamw(jz.linear_schedule(1e-3, 0.0, 10))
    for update in (tx.update, jax.jit(tx.update)):
        with pytest.raises(ValueError) as error:
            update(PARAMS, state, PARAMS)
        message = str(error.value)
        assert "chain: member 3 of 3" in message and "scale_by_schedule" in message
        assert "expected ScaleByScheduleState(count)" in message and "got EmptyState()" in message
        assert "init" in message  # what to do


@pytest.mark.parametrize(
    "built_by, used_by, expected",
    [
        (jz.adamw(1e-3), jz.adamw(1e-3, weight_decay=lambda step: 1e-4), "WeightDecayScheduleState"),
        (jz.adam(1e-3), jz.sgd(0.1, momentum=0.9), "TraceState"),
        (jz.sgd(0.1), jz.adam(1e-3), "ScaleByAdamState"),
        (jz.rmsprop(1e-3), jz.rmsprop(1e-3, centered=True), "ScaleByRStdDevState"),
        (jz.adam(1e-3), jz.inject_hyperparams(jz.adam)(learning_rate=1e-3), "InjectHyperparamsState"),
        (jz.adam(1e-3), jz.MultiSteps(jz.adam(1e-3), 2), "MultiStepsState"),
    ],
    ids=["scheduled-decay", "adam-to-sgd", "sgd-to-adam", "rms-to-centered", "inject", "multisteps"],
)
def test_a_mismatched_state_raises_naming_the_expected_state(built_by, used_by, expected):
    with pytest.raises(ValueError, match=f"does not match this transformation: expected {expected}"):
        used_by.update(PARAMS, built_by.init(PARAMS), PARAMS)


# --- errors name the argument the user wrote, under the optimizer's name ----------------------


BAD_ARGUMENTS = [
    (jz.sgd, dict(learning_rate=0.1, momentum=-0.5), "sgd", "momentum"),
    (jz.sgd, dict(learning_rate=-0.1), "sgd", "learning_rate"),
    (jz.rmsprop, dict(learning_rate=0.1, momentum=-0.5), "rmsprop", "momentum"),
    (jz.rmsprop, dict(learning_rate=0.1, decay=2.0), "rmsprop", "decay"),
    (jz.rmsprop, dict(learning_rate=0.1, eps=-1.0), "rmsprop", "eps"),
    (jz.rmsprop, dict(learning_rate=0.1, initial_scale=-1.0), "rmsprop", "initial_scale"),
    (jz.rmsprop, dict(learning_rate=0.1, decay=1.0, bias_correction=True), "rmsprop", "decay=1"),
    (jz.lars, dict(learning_rate=0.1, momentum=-0.5), "lars", "momentum"),
    (jz.lars, dict(learning_rate=0.1, nesterov=1), "lars", "nesterov"),
    (jz.lars, dict(learning_rate=0.1, trust_coefficient=-1.0), "lars", "trust_coefficient"),
    (jz.lars, dict(learning_rate=0.1, eps=-1.0), "lars", "eps"),
    (jz.lars, dict(learning_rate=0.1, weight_decay=-1.0), "lars", "weight_decay"),
    (jz.adam, dict(learning_rate=0.1, b1=1.5), "adam", "b1"),
    (jz.adam, dict(learning_rate=0.1, b2=-0.5), "adam", "b2"),
    (jz.adam, dict(learning_rate=0.1, eps_root=-1.0), "adam", "eps_root"),
    (jz.adam, dict(learning_rate=-1.0), "adam", "learning_rate"),
    (jz.adamw, dict(learning_rate=0.1, weight_decay=-1.0), "adamw", "weight_decay"),
    (jz.adamw, dict(learning_rate=0.1, b1=1.5), "adamw", "b1"),
    (jz.nadam, dict(learning_rate=0.1, b1=1.5), "nadam", "b1"),
    (jz.nadamw, dict(learning_rate=0.1, eps=-1.0), "nadamw", "eps"),
    (jz.nadamw, dict(learning_rate=0.1, weight_decay=-1.0), "nadamw", "weight_decay"),
    (jz.amsgrad, dict(learning_rate=0.1, b2=1.0), "amsgrad", "b2"),
    (jz.amsgrad, dict(learning_rate=0.1, bias_correction_nu=1), "amsgrad", "bias_correction_nu"),
    (jz.adagrad, dict(learning_rate=0.1, eps=-1.0), "adagrad", "eps"),
    (jz.adagrad, dict(learning_rate=0.1, initial_accumulator_value=-1.0), "adagrad", "initial_accumulator_value"),
    (jz.adadelta, dict(rho=2.0), "adadelta", "rho"),
    (jz.adadelta, dict(weight_decay=-1.0), "adadelta", "weight_decay"),
    (jz.lamb, dict(learning_rate=0.1, b1=1.5), "lamb", "b1"),
    (jz.lamb, dict(learning_rate=0.1, weight_decay=-1.0), "lamb", "weight_decay"),
    (jz.lamb, dict(learning_rate=0.1, axis_name=3), "lamb", "axis_name"),
    (jz.torch.sgd, dict(momentum=-0.5), "torch.sgd", "momentum"),
    (jz.torch.sgd, dict(dampening=2.0, momentum=0.9), "torch.sgd", "dampening"),
    (jz.torch.rmsprop, dict(momentum=-0.5), "torch.rmsprop", "momentum"),
    (jz.torch.rmsprop, dict(alpha=2.0), "torch.rmsprop", "alpha"),
    (jz.torch.rmsprop, dict(eps=-1.0), "torch.rmsprop", "eps"),
    (jz.torch.adam, dict(betas=(1.5, 0.9)), "torch.adam", "betas[0]"),
    (jz.torch.adamw, dict(eps=-1.0), "torch.adamw", "eps"),
    (jz.torch.adagrad, dict(initial_accumulator_value=-1.0), "torch.adagrad", "initial_accumulator_value"),
    (jz.torch.adadelta, dict(rho=2.0), "torch.adadelta", "rho"),
    (jz.torch.adadelta, dict(lr=-1.0), "torch.adadelta", "lr"),
    (jz.torch.rprop, dict(etas=(1.5, 2.0)), "torch.rprop", "etas[0]"),
    (jz.torch.rprop, dict(step_sizes=(1.0, 0.5)), "torch.rprop", "step_sizes[0]"),
    (jz.torch.asgd, dict(lambd=-1.0), "torch.asgd", "lambd"),
    (jz.torch.asgd, dict(weight_decay=-1.0), "torch.asgd", "weight_decay"),
    (jz.torch.adamax, dict(betas=(0.9, 1.0)), "torch.adamax", "betas[1]"),
    (jz.torch.sparse_adam, dict(lr=0.0), "torch.sparse_adam", "lr"),
    (jz.torch.sparse_adam, dict(lr=-1.0), "torch.sparse_adam", "lr"),
    (jz.torch.sparse_adam, dict(eps=0.0), "torch.sparse_adam", "eps"),
    (jz.torch.sparse_adam, dict(betas=(0.9, 1.0)), "torch.sparse_adam", "betas[1]"),
    (jz.scale_by_sparse_adam, dict(eps=0), "scale_by_sparse_adam", "eps"),
    (jz.torch.nadam, dict(momentum_decay=-4e-3), "torch.nadam", "momentum_decay"),
    (jz.torch.radam, dict(eps=-1.0), "torch.radam", "eps"),
    (jz.scale_by_radam, dict(threshold="5"), "scale_by_radam", "threshold"),
    (jz.torch.adafactor, dict(beta2_decay=0.5), "torch.adafactor", "beta2_decay"),
    (jz.torch.adafactor, dict(eps=(None, -1.0)), "torch.adafactor", "eps[1]"),
    (jz.torch.adafactor, dict(d=0.5), "torch.adafactor", "d"),
    (jz.scale_by_factored_second_moment, dict(eps=-1.0), "scale_by_factored_second_moment", "eps"),
    (jz.torch.muon, dict(momentum=-0.5), "torch.muon", "momentum"),
    (jz.torch.muon, dict(ns_steps=100), "torch.muon", "ns_steps"),
    (jz.torch.muon, dict(adjust_lr_fn="rms"), "torch.muon", "adjust_lr_fn"),
    (jz.scale_by_muon, dict(ns_coeffs=(1.0, 2.0)), "scale_by_muon", "ns_coeffs"),
    (jz.scale_by_muon, dict(preconditioning="polar"), "scale_by_muon", "preconditioning"),
    (jz.muon, dict(learning_rate=0.1, beta=1.5), "muon", "beta"),
    (jz.muon, dict(learning_rate=0.1, consistent_rms=-0.2), "muon", "consistent_rms"),
    (jz.torch.lbfgs, dict(lr=-1.0), "torch.lbfgs", "lr"),
    (jz.torch.lbfgs, dict(history_size=0), "torch.lbfgs", "history_size"),
    (jz.torch.lbfgs, dict(line_search_fn="backtracking"), "torch.lbfgs", "line_search_fn"),
    (jz.lion, dict(learning_rate=0.1, b2=1.0), "lion", "b2"),
    (jz.signum, dict(learning_rate=0.1, beta=-0.1), "signum", "beta"),
    (jz.adafactor, dict(decay_rate=1.5), "adafactor", "decay_rate"),
    (jz.adafactor, dict(clipping_threshold=-1.0), "adafactor", "clipping_threshold"),
    (jz.sm3, dict(learning_rate=0.1, momentum=1.0), "sm3", "momentum"),
    (jz.yogi, dict(learning_rate=0.1, b2=1.0), "yogi", "b2"),
    (jz.scale_by_yogi, dict(initial_accumulator_value=-1.0), "scale_by_yogi", "initial_accumulator_value"),
    (jz.adabelief, dict(learning_rate=0.1, eps_root=-1.0), "adabelief", "eps_root"),
    (jz.adamaxw, dict(learning_rate=0.1, weight_decay="x"), "adamaxw", "weight_decay"),
    (jz.radam, dict(learning_rate=0.1, threshold=None), "radam", "threshold"),
    (jz.adan, dict(learning_rate=0.1, b3=1.0), "adan", "b3"),
    (jz.adopt, dict(learning_rate=0.1, b2=1.0), "adopt", "b2"),
    (jz.scale_by_adopt, dict(clip_value_fn=0.25), "scale_by_adopt", "clip_value_fn"),
    (jz.ademamix, dict(learning_rate=0.1, b3=1.0), "ademamix", "b3"),
    (jz.ademamix, dict(learning_rate=0.1, alpha=-5.0), "ademamix", "alpha"),
    (jz.scale_by_ademamix, dict(nu_dtype=jnp.int8), "scale_by_ademamix", "nu_dtype"),
    (jz.simplified_ademamix, dict(learning_rate=0.1, b2=1.5), "simplified_ademamix", "b2"),
    (jz.acprop, dict(learning_rate=0.1, eps_root=-1.0), "acprop", "eps_root"),
    (jz.madgrad, dict(learning_rate=0.1, momentum=1.0), "madgrad", "momentum"),
    (jz.scale_by_madgrad, dict(learning_rate=0.1, s_dtype=jnp.int8), "scale_by_madgrad", "s_dtype"),
    (jz.novograd, dict(learning_rate=0.1, b2=1.0), "novograd", "b2"),
    (jz.scale_by_novograd, dict(eps_root=-1.0), "scale_by_novograd", "eps_root"),
    (jz.fromage, dict(learning_rate=0.1, min_norm=-1.0), "fromage", "min_norm"),
    (jz.scale_by_param_block_norm, dict(min_scale="x"), "scale_by_param_block_norm", "min_scale"),
    (jz.add_noise, dict(eta=-0.1, gamma=0.55, key=0), "add_noise", "eta"),
    (jz.add_noise, dict(eta=0.1, gamma=0.55, key="0"), "add_noise", "key"),
    (jz.noisy_sgd, dict(learning_rate=0.1, gamma=-1.0, key=0), "noisy_sgd", "gamma"),
    (jz.scale_by_optimistic_gradient, dict(beta=None), "scale_by_optimistic_gradient", "beta"),
    (jz.optimistic_gradient_descent, dict(learning_rate=0.1, alpha="1"), "optimistic_gradient_descent", "alpha"),
    (jz.optimistic_adam_v2, dict(learning_rate=0.1, eps=-1.0), "optimistic_adam_v2", "eps"),
    (jz.optimistic_adam_v2, dict(learning_rate=0.1, previous_gradient_dtype=jnp.int8), "optimistic_adam_v2",
     "previous_gradient_dtype"),
    (jz.scale_by_polyak, dict(max_learning_rate=-1.0), "scale_by_polyak", "max_learning_rate"),
    (jz.galore, dict(learning_rate=0.1, rank=0), "galore", "rank"),
    (jz.galore, dict(learning_rate=0.1, update_proj_gap=2.5), "galore", "update_proj_gap"),
    (jz.galore, dict(learning_rate=0.1, svd_dtype=jnp.int32), "galore", "svd_dtype"),
    (jz.scale_by_galore, dict(scale=float("nan")), "scale_by_galore", "scale"),
    (jz.polyak_sgd, dict(variant="sgd"), "polyak_sgd", "variant"),
    (jz.polyak_sgd, dict(f_min=float("inf")), "polyak_sgd", "f_min"),
    (jz.momo, dict(beta=1.0), "momo", "beta"),
    (jz.momo, dict(weight_decay=-1e-4), "momo", "weight_decay"),
    (jz.momo_adam, dict(eps=-1.0), "momo_adam", "eps"),
    (jz.momo_adam, dict(adapt_lower_bound=1), "momo_adam", "adapt_lower_bound"),
    (jz.scale_by_momo, dict(mu_dtype=jnp.int8), "scale_by_momo", "mu_dtype"),
    (jz.sophia, dict(learning_rate=0.1, update_interval=0), "sophia", "update_interval"),
    (jz.sophia, dict(learning_rate=0.1, clip_threshold=-1.0), "sophia", "clip_threshold"),
    (jz.sophia, dict(learning_rate=0.1, eps=0.0, clip_threshold=None), "sophia", "eps"),  # +-inf at the first step
    (jz.scale_by_sophia, dict(eps=0, clip_threshold=None), "scale_by_sophia", "eps"),
    (jz.sophia, dict(learning_rate=0.1, nu_dtype=jnp.int8), "sophia", "nu_dtype"),
    (jz.scale_by_sophia, dict(gamma=-0.01), "scale_by_sophia", "gamma"),
    (jz.hutchinson_estimator_diag_hessian, dict(random_seed=0), "hutchinson_estimator_diag_hessian", "random_seed"),
    (jz.scale_by_distance_over_gradients, dict(reps_rel=-1e-6), "scale_by_distance_over_gradients", "reps_rel"),
    (jz.scale_by_distance_over_gradients, dict(axis_name=3), "scale_by_distance_over_gradients", "axis_name"),
    (jz.dog, dict(init_step=("distance", 0.0)), "dog", "init_step"),
    (jz.dog, dict(init_step=("lr", 0.1)), "dog", "init_step"),
    (jz.dog, dict(weight_decay=-1.0), "dog", "weight_decay"),
    (jz.scale_by_dog, dict(init_step=("heuristic", 1e-6), eps=-1.0), "scale_by_dog", "eps"),
    (jz.dowg, dict(eps=0.0), "dowg", "eps"),
    (jz.dowg, dict(init_estim_sq_dist=-1.0), "dowg", "init_estim_sq_dist"),
    (jz.scale_by_dowg, dict(axis_name=3), "scale_by_dowg", "axis_name"),
    (jz.cocob, dict(alpha=0.0), "cocob", "alpha"),
    (jz.cocob, dict(accumulator_dtype=jnp.int8), "cocob", "accumulator_dtype"),
    (jz.scale_by_cocob, dict(eps=0.0), "scale_by_cocob", "eps"),
    (jz.mechanize, dict(base_optimizer=jz.sgd(0.1), num_betas=0), "mechanize", "num_betas"),
    (jz.mechanize, dict(base_optimizer=jz.sgd(0.1), s_init=-1.0), "mechanize", "s_init"),
    (jz.mechanize, dict(base_optimizer=jz.sgd(0.1), weight_decay=-1.0), "mechanize", "weight_decay"),
    (jz.apply_every, dict(k=0), "apply_every", "k"),
    (jz.apply_every, dict(k=2.5), "apply_every", "k"),
    (jz.apply_every, dict(k=2, accumulator_dtype=jnp.int8), "apply_every", "accumulator_dtype"),
    (jz.conditionally_mask, dict(inner=jz.sgd(0.1), should_transform_fn=None), "conditionally_mask", "should_transform_fn"),
    (jz.conditionally_transform, dict(inner=jz.sgd(0.1), should_transform_fn=lambda s: s == 0, forward_extra_args=1),
     "conditionally_transform", "forward_extra_args"),
    (lambda **kw: jz.skip_large_updates(PARAMS, 0, None, **kw), dict(max_squared_norm=-1.0), "skip_large_updates",
     "max_squared_norm"),
    (lambda **kw: jz.skip_not_finite(PARAMS, 0, None, **kw), dict(axis_name=3), "skip_not_finite", "axis_name"),
    (lambda **kw: jz.periodic_update(PARAMS, PARAMS, 1, **kw), dict(update_period=0), "periodic_update", "update_period"),
    (lambda **kw: jz.incremental_update(PARAMS, PARAMS, **kw), dict(step_size=1.5), "incremental_update", "step_size"),
    (jz.snapshot, dict(measure_name="norm", measure=None), "snapshot", "measure"),
    (jz.measure_with_ema, dict(measure=jnp.sum, decay=1.5), "measure_with_ema", "decay"),
    (jz.lbfgs, dict(memory_size=0), "lbfgs", "memory_size"),
    (jz.lbfgs, dict(learning_rate=-1.0), "lbfgs", "learning_rate"),
    (jz.lbfgs, dict(linesearch="zoom"), "lbfgs", "linesearch"),
    (jz.lbfgs, dict(memory_dtype=jnp.int8), "lbfgs", "memory_dtype"),
    (jz.scale_by_lbfgs, dict(memory_size=2.5), "scale_by_lbfgs", "memory_size"),
    (jz.scale_by_lbfgs, dict(scale_init_precond=1), "scale_by_lbfgs", "scale_init_precond"),
    (jz.scale_by_backtracking_linesearch, dict(max_backtracking_steps=-1), "scale_by_backtracking_linesearch",
     "max_backtracking_steps"),
    (jz.scale_by_backtracking_linesearch, dict(max_backtracking_steps=5, decrease_factor=1.0),
     "scale_by_backtracking_linesearch", "decrease_factor"),
    (jz.scale_by_backtracking_linesearch, dict(max_backtracking_steps=5, increase_factor=0.5),
     "scale_by_backtracking_linesearch", "increase_factor"),
    (jz.scale_by_backtracking_linesearch, dict(max_backtracking_steps=5, slope_rtol=1.0),
     "scale_by_backtracking_linesearch", "slope_rtol"),
    (jz.scale_by_zoom_linesearch, dict(max_linesearch_steps=0), "scale_by_zoom_linesearch", "max_linesearch_steps"),
    (jz.scale_by_zoom_linesearch, dict(max_linesearch_steps=5, slope_rtol=0.5, curv_rtol=0.1),
     "scale_by_zoom_linesearch", "slope_rtol"),
    (jz.scale_by_zoom_linesearch, dict(max_linesearch_steps=5, curv_rtol=-0.1), "scale_by_zoom_linesearch", "curv_rtol"),
    (jz.scale_by_zoom_linesearch, dict(max_linesearch_steps=5, increase_factor=1.0), "scale_by_zoom_linesearch",
     "increase_factor"),
    (jz.scale_by_zoom_linesearch, dict(max_linesearch_steps=5, initial_guess_strategy="last"),
     "scale_by_zoom_linesearch", "initial_guess_strategy"),
    (jz.rprop, dict(learning_rate=0.1, eta_minus=1.5), "rprop", "eta_minus"),
    (jz.rprop, dict(learning_rate=0.1, min_step_size=1.0, max_step_size=0.5), "rprop", "min_step_size"),
    (jz.zero_nans, dict(axis_name=3), "zero_nans", "axis_name"),
    (jz.transforms.clipping.per_example_global_norm_clip, dict(grads=[jnp.ones((2, 3))], l2_norm_clip=-1.0),
     "per_example_global_norm_clip", "l2_norm_clip"),
    (jz.transforms.clipping.per_example_layer_norm_clip, dict(grads=[jnp.ones((2, 3))], global_l2_norm_clip=1.0,
     uniform=1), "per_example_layer_norm_clip", "uniform"),
    (jz.microbatching.microbatch, dict(fun=jnp.sum, argnums=0, microbatch_size=0), "microbatch", "microbatch_size"),
    (jz.combine.selective_transform, dict(optimizer=jz.sgd(0.1), freeze_mask={"w": "yes"}), "selective_transform",
     "freeze_mask"),
    (jz.wrappers.inject_stateful_hyperparams, dict(inner_factory=jz.sgd, static_args="lr"),
     "inject_stateful_hyperparams", "static_args"),
    (jz.sam, dict(optimizer=jz.sgd(0.1), adv_optimizer=jz.sgd(0.1), sync_period=0), "sam", "sync_period"),
    (jz.sam, dict(optimizer=jz.sgd(0.1), adv_optimizer=jz.sgd(0.1), opaque_mode="yes"), "sam", "opaque_mode"),
    (jz.normalize, dict(axis_name=3), "normalize", "axis_name"),
    (jz.reduce_on_plateau, dict(factor=1.5), "reduce_on_plateau", "factor"),
    (jz.reduce_on_plateau, dict(patience=2.5), "reduce_on_plateau", "patience"),
    (jz.reduce_on_plateau, dict(atol=-1.0), "reduce_on_plateau", "atol"),
    (jz.reduce_on_plateau, dict(accumulation_size=0), "reduce_on_plateau", "accumulation_size"),
    (jz.reduce_on_plateau, dict(min_scale=-0.1), "reduce_on_plateau", "min_scale"),
    (jz.differentially_private_aggregate, dict(l2_norm_clip=1.0, noise_multiplier=-1.0, key=0),
     "differentially_private_aggregate", "noise_multiplier"),
    (jz.dpsgd, dict(learning_rate=0.1, l2_norm_clip=-1.0, noise_multiplier=1.0, seed=0), "dpsgd", "l2_norm_clip"),
    (jz.dpsgd, dict(learning_rate=-0.1, l2_norm_clip=1.0, noise_multiplier=1.0, seed=0), "dpsgd", "learning_rate"),
    (jz.dpsgd, dict(learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=1.0, seed=0, accumulator_dtype=jnp.int8),
     "dpsgd", "accumulator_dtype"),
    (jz.prodigy, dict(betas=(0.9, 1.0)), "prodigy", "betas[1]"),
    (jz.prodigy, dict(estim_lr_coef=0.0), "prodigy", "estim_lr_coef"),
    (jz.prodigy, dict(params0_dtype=jz.Blockwise8Bit()), "prodigy", "params0_dtype"),
    (jz.dadapt_adamw, dict(estim_lr0=0.0), "dadapt_adamw", "estim_lr0"),
    (jz.dadapt_adamw, dict(weight_decay=-1.0), "dadapt_adamw", "weight_decay"),
    (jz.schedule_free_adamw, dict(b1=0.0), "schedule_free_adamw", "b1"),
    (jz.schedule_free_adamw, dict(state_dtype=jz.Blockwise8Bit()), "schedule_free_adamw", "state_dtype"),
    (jz.madgrad, dict(learning_rate=0.1, x0_dtype=jz.Blockwise8Bit()), "madgrad", "x0_dtype"),
    (jz.scale_by_madgrad, dict(learning_rate=0.1, x0_dtype=jz.Blockwise8Bit()), "scale_by_madgrad", "x0_dtype"),
    (jz.schedule_free_sgd, dict(warmup_steps=2.5), "schedule_free_sgd", "warmup_steps"),
    (jz.schedule_free, dict(base_optimizer=jz.sgd(0.1), learning_rate=0.1, weight_lr_power=-2.0), "schedule_free",
     "weight_lr_power"),
    (jz.shampoo, dict(learning_rate=0.1, max_precond_dim=0), "shampoo", "max_precond_dim"),
    (jz.shampoo, dict(learning_rate=0.1, precondition_frequency=0), "shampoo", "precondition_frequency"),
    (jz.shampoo, dict(learning_rate=0.1, eps=-1e-8), "shampoo", "eps"),
    (jz.shampoo, dict(learning_rate=0.1, b1=1.0), "shampoo", "b1"),
    (jz.scale_by_shampoo, dict(max_precond_dim=0), "scale_by_shampoo", "max_precond_dim"),
    (jz.shampoo, dict(learning_rate=0.1, axis_name=3), "shampoo", "axis_name"),
    (jz.scale_by_shampoo, dict(partition_specs=["data"]), "scale_by_shampoo", "partition_specs"),
    (jz.cautious_adamw, dict(learning_rate=0.1, b1=1.0), "cautious_adamw", "b1"),
    (jz.cautious_adamw, dict(learning_rate=0.1, caution="yes"), "cautious_adamw", "caution"),
    (jz.cautious_lion, dict(learning_rate=0.1, mu_dtype=jnp.int8), "cautious_lion", "mu_dtype"),
    (jz.cautious_sgd, dict(learning_rate=0.1, momentum=-0.9), "cautious_sgd", "momentum"),
    (jz.cautious, dict(inner=jz.sgd(0.1), axis_name=0), "cautious", "axis_name"),
    (jz.mars_correction, dict(gamma=-1.0), "mars_correction", "gamma"),
    (jz.mars_correction, dict(max_norm=-1.0), "mars_correction", "max_norm"),
    (jz.mars_adamw, dict(b2=1.5), "mars_adamw", "b2"),
    (jz.mars_adamw, dict(prev_dtype=jnp.float8_e4m3fn), "mars_adamw", "prev_dtype"),
    (jz.mars_lion, dict(learning_rate=0.1, gamma=None), "mars_lion", "gamma"),
    (jz.soap, dict(max_precond_dim=0), "soap", "max_precond_dim"),
    (jz.soap, dict(precondition_frequency=0), "soap", "precondition_frequency"),
    (jz.soap, dict(precondition_frequency=2.5), "soap", "precondition_frequency"),
    (jz.soap, dict(eps=-1e-8), "soap", "eps"),
    (jz.soap, dict(b1=1.0), "soap", "b1"),
    (jz.soap, dict(b2=-0.1), "soap", "b2"),
    (jz.soap, dict(shampoo_b2=1.5), "soap", "shampoo_b2"),
    (jz.soap, dict(learning_rate=-1e-3), "soap", "learning_rate"),
    (jz.soap, dict(weight_decay=-0.1), "soap", "weight_decay"),
    (jz.soap, dict(merge_dims=1), "soap", "merge_dims"),
    (jz.soap, dict(mu_dtype=jnp.int8), "soap", "mu_dtype"),
    (jz.soap, dict(partition_specs={"w": "data"}), "soap", "partition_specs"),
    (jz.scale_by_soap, dict(axis_name=("data", 1)), "scale_by_soap", "axis_name"),
    (jz.scale_by_soap, dict(max_precond_dim=0), "scale_by_soap", "max_precond_dim"),
    (jz.scale_by_soap, dict(nu_dtype=jnp.float8_e4m3fn), "scale_by_soap", "nu_dtype"),
    (jz.psgd_kron, dict(precond_lr=0.0), "psgd_kron", "precond_lr"),
    (jz.psgd_kron, dict(preconditioner_update_probability=1.5), "psgd_kron", "preconditioner_update_probability"),
    (jz.psgd_kron, dict(max_size_triangular=0), "psgd_kron", "max_size_triangular"),
    (jz.psgd_kron, dict(min_ndim_triangular=-1), "psgd_kron", "min_ndim_triangular"),
    (jz.psgd_kron, dict(memory_save_mode="some_diag"), "psgd_kron", "memory_save_mode"),
    (jz.psgd_kron, dict(b1=1.0), "psgd_kron", "b1"),
    (jz.psgd_kron, dict(learning_rate=-1e-3), "psgd_kron", "learning_rate"),
    (jz.psgd_kron, dict(key="seed"), "psgd_kron", "key"),
    (jz.psgd_kron, dict(key=2**40), "psgd_kron", "key"),  # JAX would keep its low 32 bits: key 0's draws
    (jz.psgd_kron, dict(cached=1), "psgd_kron", "cached"),
    (jz.psgd_kron, dict(axis_name=0), "psgd_kron", "axis_name"),
    (jz.scale_by_psgd_kron, dict(partition_specs="data"), "scale_by_psgd_kron", "partition_specs"),
    (jz.scale_by_psgd_kron, dict(precond_init_scale=0.0), "scale_by_psgd_kron", "precond_init_scale"),
    (jz.scale_by_psgd_kron, dict(damping=-1e-9), "scale_by_psgd_kron", "damping"),
    (jz.scale_by_psgd_kron, dict(momentum_into_precond_update=1), "scale_by_psgd_kron", "momentum_into_precond_update"),
    (jz.scale_by_psgd_kron, dict(mu_dtype=jnp.int8), "scale_by_psgd_kron", "mu_dtype"),
    # An integer beyond int32 for a float hyperparameter: JAX cannot convert it (a Python int) or wraps it (NumPy's).
    (jz.clip_by_global_norm, dict(max_norm=10**10), "clip_by_global_norm", "max_norm"),
    (jz.adam, dict(learning_rate=3_000_000_000), "adam", "learning_rate"),
    (jz.adam, dict(learning_rate=np.int64(10**10)), "adam", "learning_rate"),
    (jz.average_iterates, dict(t0=3_000_000_000), "average_iterates", "t0"),
    (jz.cosine_decay_schedule, dict(init_value=1.0, decay_steps=10, exponent=2**40), "cosine_decay_schedule",
     "exponent"),
    (jz.add_noise, dict(eta=0.1, gamma=2**40, key=0), "add_noise", "gamma"),
    (jz.noisy_sgd, dict(learning_rate=0.1, gamma=2**40, key=0), "noisy_sgd", "gamma"),
    # Integer sizes beyond their bound: an unrolled loop that never finishes tracing, a loop that never ends.
    (jz.muon, dict(learning_rate=1e-2, ns_steps=10**6), "muon", "ns_steps"),
    (jz.scale_by_muon, dict(ns_steps=100), "scale_by_muon", "ns_steps"),
    (jz.scale_by_zoom_linesearch, dict(max_linesearch_steps=1e30), "scale_by_zoom_linesearch", "max_linesearch_steps"),
    (jz.scale_by_zoom_linesearch, dict(max_linesearch_steps=2**31), "scale_by_zoom_linesearch",
     "max_linesearch_steps"),
    (jz.scale_by_backtracking_linesearch, dict(max_backtracking_steps=2**40), "scale_by_backtracking_linesearch",
     "max_backtracking_steps"),
    (jz.lbfgs, dict(memory_size=1e30), "lbfgs", "memory_size"),
    (jz.scale_by_lbfgs, dict(memory_size=2**31), "scale_by_lbfgs", "memory_size"),
    (jz.scale_by_soap, dict(max_precond_dim=1e30), "scale_by_soap", "max_precond_dim"),
    (jz.soap, dict(learning_rate=1e-3, max_precond_dim=1e30), "soap", "max_precond_dim"),
    (jz.newton_schulz, dict(x=jnp.ones((2, 3)), ns_steps=10**6), "newton_schulz", "ns_steps"),
    # Degenerate settings whose every step is g / eps (about 1e8 g): AdaBelief's and ACProp's b1=0 (the prediction
    # error g - m is 0), RMSprop's decay=1 from a zero average (it stays 0).
    (jz.adabelief, dict(learning_rate=0.1, b1=0.0), "adabelief", "b1"),
    (jz.scale_by_belief, dict(b1=0), "scale_by_belief", "b1"),
    (jz.acprop, dict(learning_rate=0.1, b1=0.0), "acprop", "b1"),
    (jz.scale_by_acprop, dict(b1=0.0), "scale_by_acprop", "b1"),
    (jz.rmsprop, dict(learning_rate=0.1, decay=1.0), "rmsprop", "decay"),
    (jz.rmsprop, dict(learning_rate=0.1, decay=1, centered=True), "rmsprop", "decay"),
    (jz.scale_by_rms, dict(decay=1.0), "scale_by_rms", "decay"),
    (jz.scale_by_stddev, dict(decay=1.0), "scale_by_stddev", "decay"),
    (jz.torch.rmsprop, dict(alpha=1.0), "torch.rmsprop", "alpha"),
]


@pytest.mark.parametrize(
    "factory, kwargs, owner, name", BAD_ARGUMENTS, ids=[f"{o}-{n}" for _, _, o, n in BAD_ARGUMENTS]
)
def test_errors_name_the_optimizer_and_the_argument_written(factory, kwargs, owner, name):
    with pytest.raises(ValueError) as error:
        factory(**kwargs)
    assert str(error.value).startswith(f"{owner}: {name}"), str(error.value)


@pytest.mark.parametrize(
    "build, value",
    [(lambda v: jz.clip_by_global_norm(v), 10**10), (lambda v: jz.adam(v), np.int64(3_000_000_000)),
     (lambda v: jz.add_noise(0.1, v, 0), -(2**40))],
    ids=["python-int", "numpy-int", "negative"],
)
def test_an_integer_beyond_int32_for_a_float_hyperparameter_asks_for_a_float(build, value):
    with pytest.raises(ValueError, match=re.escape(f"got {value!r}; pass {float(value)!r} instead.")):
        build(value)


def test_the_same_numbers_as_floats_or_within_int32_work():
    grads = {"w": jnp.array([3.0, 4.0])}
    for max_norm in (1e10, 2**31 - 1):
        tx = jz.clip_by_global_norm(max_norm)
        np.testing.assert_array_equal(tx.update(grads, tx.init(grads))[0]["w"], grads["w"])
    schedule = jz.cosine_decay_schedule(1.0, 10, exponent=2.0**40)
    np.testing.assert_array_equal([jax.jit(schedule)(s) for s in (0, 5, 10)], [1.0, 0.0, 0.0])


def test_the_neighbours_of_the_degenerate_settings_work():
    grads = {"w": jnp.array([0.5, -2.0])}
    for tx in (jz.adabelief(0.1, b1=0.5), jz.acprop(0.1, b1=0.5), jz.rmsprop(0.1, decay=1.0, initial_scale=4.0)):
        updates, _ = tx.update(grads, tx.init(grads), grads)
        assert np.all(np.abs(np.asarray(updates["w"])) < 1.0)  # not g / eps
    tx = jz.rmsprop(0.1, decay=1.0, initial_scale=4.0)
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(updates["w"], -0.1 * np.array([0.5, -2.0]) / np.sqrt(4.0 + 1e-8), rtol=1e-6)


@pytest.mark.parametrize(
    "build, name, value",
    [(jz.adam, "learning_rate", 1e39), (jz.constant_schedule, "value", -3.5e38),
     (lambda v: jz.clip_by_global_norm(v), "max_norm", np.float64(1e300))],
    ids=["adam", "constant_schedule", "numpy-float64"],
)
def test_a_float_beyond_float32_is_refused_without_x64(build, name, value):
    # It became inf inside JAX with no error (adam stepped by inf, the schedule returned -inf).
    with pytest.raises(ValueError, match=rf": {name} is beyond float32's range \(largest 3.4028235e\+38\), got "):
        build(value)
    build(3.4e38)  # the largest float32s are accepted
    with jax.enable_x64(True):
        build(value)  # float64 holds it


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: jz.muon(1e-2, ns_steps=10**6), r"^muon: ns_steps must be at most 99, got 1000000\."),
        (lambda: jz.scale_by_zoom_linesearch(1e30), r"^scale_by_zoom_linesearch: max_linesearch_steps must be at most "
         r"2147483647 \(the largest int32"),
        (lambda: jz.scale_by_zoom_linesearch(-1), r"^scale_by_zoom_linesearch: max_linesearch_steps must be an integer "
         r">= 1, got -1\."),
        (lambda: jz.scale_by_lbfgs(2**100), r"^scale_by_lbfgs: memory_size must be at most 2147483647"),
        (lambda: jz.scale_by_soap(max_precond_dim=2**100), r"^scale_by_soap: max_precond_dim must be at most "
         r"2147483647"),
        (lambda: jz.shampoo(0.1, max_precond_dim=2**31), r"^shampoo: max_precond_dim must be at most 2147483647 "
         r"\(the largest int32, JAX's integer type\), got 2147483648\."),
    ],
    ids=["muon", "zoom", "zoom-negative", "lbfgs-python-int", "scale_by_soap", "shampoo"],
)
def test_a_size_beyond_its_bound_says_the_bound_that_failed(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_adaptive_grad_clip_in_shard_map_gives_advice_that_can_be_followed():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    tx = jz.adaptive_grad_clip(0.1)
    local = jax.shard_map(
        lambda g, p: tx.update(g, tx.init(p), p)[0], mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data")
    )
    x = jax.device_put(jnp.ones(2 * jax.device_count()), jax.sharding.NamedSharding(mesh, P("data")))
    with pytest.raises(ValueError) as error:
        jax.jit(local)(x, x)
    message = str(error.value)
    assert "Pass axis_name" not in message  # adaptive_grad_clip has no such argument
    assert "adaptive_grad_clip has no axis_name option" in message and "under jax.jit" in message


# --- step counts beyond int32; MultiSteps' k ---------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda n: jz.linear_schedule(1.0, 0.0, 10, transition_begin=n),
        lambda n: jz.linear_schedule(1.0, 0.0, transition_steps=n),
        lambda n: jz.polynomial_schedule(1.0, 0.0, 2, 10, transition_begin=n),
        lambda n: jz.exponential_decay(1.0, 10, 0.5, transition_begin=n),
        lambda n: jz.cosine_decay_schedule(1.0, decay_steps=n),
        lambda n: jz.warmup_cosine_decay_schedule(0.0, 1.0, 10, decay_steps=n),
        lambda n: jz.join_schedules([jz.constant_schedule(1.0), jz.constant_schedule(0.5)], [n]),
        lambda n: jz.piecewise_constant_schedule(1.0, {n: 0.5}),
        lambda n: jz.linear_onecycle_schedule(n, 1.0),
        lambda n: jz.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=1, decay_steps=n)] * 3),
    ],
    ids=["linear-begin", "linear-steps", "polynomial", "exponential", "cosine", "warmup-cosine", "join",
         "piecewise", "onecycle", "sgdr"],
)
def test_step_counts_beyond_int32_are_refused_at_construction(build):
    with pytest.raises(ValueError, match=r"must be at most 2147483647 \(the largest int32"):
        build(2**31)


def test_the_largest_int32_step_count_works_at_the_first_call():
    assert float(jz.linear_schedule(1.0, 0.0, 10, transition_begin=2**31 - 1)(0)) == 1.0


@pytest.mark.parametrize("k", [0, -1, 2.5, lambda step: 0, lambda step: -1, lambda step: 2.5, lambda step: jnp.array(0)])
def test_multisteps_refuses_a_k_that_never_applies_an_update(k):
    with pytest.raises(ValueError, match="MultiSteps: every_k_schedule"):
        jz.MultiSteps(jz.sgd(0.1), every_k_schedule=k)


def test_multisteps_accepts_a_schedule_that_starts_at_one_or_more():
    tx = jz.MultiSteps(jz.sgd(1.0), every_k_schedule=lambda step: jnp.where(step < 2, 1, 2))
    state = tx.init(PARAMS)
    updates, state = tx.update(PARAMS, state)
    np.testing.assert_array_equal(updates["w"], -PARAMS["w"])


def test_lookahead_and_apply_if_finite_refuse_counts_beyond_int32():
    with pytest.raises(ValueError, match="lookahead: sync_period must be at most 2147483647"):
        jz.lookahead(jz.sgd(0.1), 2**31, 0.5)
    with pytest.raises(ValueError, match="apply_if_finite: max_consecutive_errors must be at most"):
        jz.apply_if_finite(jz.sgd(0.1), 2**31)


# --- eps = 0 and denormal eps --------------------------------------------------------------------


ZERO_EPS = {
    "adam": lambda: jz.adam(1e-2, eps=0.0),
    "adam-eps_root-array": lambda: jz.adam(1e-2, eps=jnp.array(0.0)),
    "amsgrad": lambda: jz.amsgrad(1e-2, eps=0.0),
    "lamb": lambda: jz.lamb(1e-2, eps=0.0),
    "rmsprop": lambda: jz.rmsprop(1e-2, eps=0.0),
    "rmsprop-centered": lambda: jz.rmsprop(1e-2, eps=0.0, centered=True),
    "rmsprop-eps-outside": lambda: jz.rmsprop(1e-2, eps=0.0, eps_in_sqrt=False),
    "torch.adam": lambda: jz.torch.adam(eps=0.0),
    "torch.adam-amsgrad": lambda: jz.torch.adam(eps=0.0, amsgrad=True),
    "torch.rmsprop": lambda: jz.torch.rmsprop(eps=0.0),
    "torch.rmsprop-centered": lambda: jz.torch.rmsprop(eps=0.0, centered=True),
    "inject-adam": lambda: jz.inject_hyperparams(jz.adam)(learning_rate=1e-2, eps=0.0),
    "adabelief": lambda: jz.adabelief(1e-2, eps=0.0, eps_root=0.0),
    "adan": lambda: jz.adan(1e-2, eps=0.0, eps_root=0.0),
    "yogi-zero-init": lambda: jz.chain(jz.scale_by_yogi(eps=0.0, initial_accumulator_value=0.0), jz.scale_by_learning_rate(1e-2)),
    "novograd": lambda: jz.novograd(1e-2, eps=0.0),
    "adopt": lambda: jz.adopt(1e-2, eps=0.0),
    "adopt-no-clipping": lambda: jz.adopt(1e-2, eps=0.0, use_clipping=False),
    "ademamix": lambda: jz.ademamix(1e-2, eps=0.0),
    "simplified_ademamix": lambda: jz.simplified_ademamix(1e-2, eps=0.0),
    "acprop": lambda: jz.acprop(1e-2, eps=0.0, eps_root=0.0),
    "madgrad": lambda: jz.madgrad(1e-2, eps=0.0),
    "prodigy": lambda: jz.prodigy(eps=0.0),
    "dadapt_adamw": lambda: jz.dadapt_adamw(eps=0.0),
    # SOAP's first step only builds the bases; the second is Adam's in them (1-D leaves rotated too here).
    "soap": lambda: jz.soap(1e-2, eps=0.0, weight_decay=0.0, precondition_1d=True),
    # Shampoo's own eps must be > 0 (its first factors are singular); its Adam grafting takes eps = 0.
    "shampoo": lambda: jz.shampoo(1e-2, grafting_eps=0.0, precondition_frequency=1),
    "cautious_adamw": lambda: jz.cautious_adamw(1e-2, eps=0.0, weight_decay=0.0),
    "mars_adamw": lambda: jz.mars_adamw(1e-2, eps=0.0),
}


@pytest.mark.parametrize("name", sorted(ZERO_EPS))
def test_eps_zero_and_zero_gradients_give_no_nan(name):
    tx = ZERO_EPS[name]()
    params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([0.0, 0.3]), "b": jnp.zeros(1)}  # one exact zero in w, all zero in b
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        for leaf in jax.tree.leaves(updates):
            assert bool(jnp.all(jnp.isfinite(leaf))), (name, updates)
    assert float(updates["b"][0]) == 0.0 and float(updates["w"][0]) == 0.0
    assert float(updates["w"][1]) != 0.0  # the non-zero gradient still moves


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: jz.adam(1e-2, eps=1e-8), lambda: optax.adam(1e-2, eps=1e-8)),
        (lambda: jz.adam(1e-2, eps=0.0, eps_root=1e-8), lambda: optax.adam(1e-2, eps=0.0, eps_root=1e-8)),
        (lambda: jz.rmsprop(1e-2, eps=1e-8, centered=True), lambda: optax.rmsprop(1e-2, eps=1e-8, centered=True)),
        (lambda: jz.amsgrad(1e-2, eps=1e-30), lambda: optax.amsgrad(1e-2, eps=1e-30)),
    ],
    ids=["adam", "adam-eps_root", "rmsprop-centered", "amsgrad-tiny-eps"],
)
def test_positive_eps_keeps_optax_numbers_bit_for_bit(ours, theirs):
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    grads = [{"w": jnp.array([0.1 * i, -0.3, 0.0])} for i in range(4)]

    def trajectory(tx):
        state, p, out = tx.init(params), params, []
        step = jax.jit(lambda g, s, p: tx.update(g, s, p))
        for g in grads:
            u, state = step(g, state, p)
            p = optax.apply_updates(p, u)
            out.append(np.asarray(p["w"]))
        return np.stack(out)

    np.testing.assert_array_equal(trajectory(ours()), trajectory(theirs()))


@pytest.mark.parametrize(
    "build",
    [lambda e: jz.adam(1e-3, eps=e), lambda e: jz.adam(1e-3, eps_root=e), lambda e: jz.rmsprop(1e-3, eps=e),
     lambda e: jz.adagrad(0.1, eps=e), lambda e: jz.scale_by_amsgrad(eps=e), lambda e: jz.torch.adam(eps=e),
     lambda e: jz.torch.rmsprop(eps=e), lambda e: jz.adadelta(eps=e), lambda e: jz.torch.sparse_adam(eps=e)],
)
def test_denormal_eps_is_refused(build):
    with pytest.raises(ValueError, match="below float32's smallest normal number"):
        build(1e-45)


@pytest.mark.parametrize(
    "build, owner",
    [(lambda: jz.adadelta(eps=0.0), "adadelta"), (lambda: jz.scale_by_adadelta(eps=0), "scale_by_adadelta"),
     (lambda: jz.torch.adadelta(eps=0.0), "torch.adadelta")],
)
def test_adadelta_refuses_eps_zero_whose_steps_would_all_be_zero(build, owner):
    with pytest.raises(ValueError, match=f"{owner}: eps must be > 0 \\(with eps=0 every step is 0"):
        build()


# --- MultiSteps against optax.MultiSteps inside nnx.Optimizer ------------------------------------


def test_multisteps_matches_optax_bit_for_bit_in_a_jitted_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")

    def trajectory(tx, grads):
        model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        step = nnx.jit(lambda model, optimizer, g: optimizer.update(model, g))
        out = []
        for g in grads:
            step(model, optimizer, g)
            out.append(np.asarray(model.kernel[...]))
        return np.stack(out)

    template = nnx.state(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Param)
    keys = jax.random.split(jax.random.key(1), 12)
    grads = [jax.tree.map(lambda v, k=k: jax.random.normal(k, v.shape), template) for k in keys]
    ours = trajectory(jz.MultiSteps(jz.adam(1e-2), 3), grads)
    theirs = trajectory(optax.MultiSteps(optax.adam(1e-2), 3), grads)
    np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(ours[0], ours[3])  # updates were applied


ZERO_SIZE = {  # optimizers whose zero-size leaves once left NaN in the state (a mean over an empty axis) or raised
    "torch.adafactor": lambda: jz.torch.adafactor(lr=0.01),
    "sm3": lambda: jz.sm3(0.1),
    "muon": lambda: jz.muon(0.01),
}


@pytest.mark.parametrize("name", sorted(ZERO_SIZE))
def test_a_zero_size_matrix_leaves_the_state_finite_and_the_other_leaves_alone(name):
    # A NaN in the state would make apply_if_finite skip every step of the whole model.
    w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    tx = ZERO_SIZE[name]()
    with_empty = {"w": w, "z": jnp.zeros((0, 4))}
    updates, state = tx.update(with_empty, tx.init(with_empty), with_empty)
    assert updates["z"].shape == (0, 4)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact))
    alone, _ = tx.update({"w": w}, tx.init({"w": w}), {"w": w})
    np.testing.assert_array_equal(updates["w"], alone["w"])


def test_complex_params_raise_where_the_rule_has_no_complex_meaning():
    # MADGRAD's cube root and ADOPT's clip to [-c, c] failed with JAX's bare errors (Optax's too); so did Rprop's
    # signs, clip's and Sophia's orderings ("Clip received a complex value", at the first update, naming nothing).
    # A recipe names itself, not its inner transformation.
    params = {"w": jnp.ones((2, 3), jnp.complex64)}
    remedy = r".*a leaf of dtype complex64\); wrap the optimizer in jz\.combine\.split_real_and_imaginary\.$"
    for tx, message in [(jz.madgrad(0.1), r"^madgrad: complex params are not supported" + remedy),
                        (jz.scale_by_madgrad(0.1), r"^scale_by_madgrad: complex params are not supported" + remedy),
                        (jz.adopt(0.1), r"^adopt: complex params are not supported \(use_clipping=True clips each "
                                        r"entry to \[-c, c\], which a complex one has no place in: pass use_clipping="
                                        r"False" + remedy),
                        (jz.scale_by_adopt(), r"^scale_by_adopt: use_clipping=True clips each entry"),
                        (jz.dadapt_adamw(), r"^dadapt_adamw: complex params are not supported \(the distance" + remedy),
                        (jz.prodigy(), r"^prodigy: complex params are not supported \(the distance" + remedy),
                        (jz.scale_by_prodigy(), r"^scale_by_prodigy: complex params are not supported" + remedy),
                        (jz.sm3(0.1), r"^sm3: complex params are not supported \(as in Optax" + remedy),
                        (jz.shampoo(0.1), r"^shampoo: complex params are not supported" + remedy),
                        (jz.soap(0.1), r"^soap: complex params are not supported" + remedy),
                        (jz.psgd_kron(), r"^psgd_kron: complex params are not supported" + remedy),
                        (jz.muon(0.1), r"^scale_by_muon: Muon does not support complex parameters .* Give complex "
                                       r"matrices another optimizer with jz.partition"),
                        (jz.rprop(0.1), r"^rprop: complex params are not supported \(Rprop adapts" + remedy),
                        (jz.transforms.rprop.scale_by_rprop(0.1), r"^scale_by_rprop: complex params" + remedy),
                        (jz.scale_by_resilient_step(0.1), r"^scale_by_resilient_step: complex params" + remedy),
                        (jz.clip(1.0), r"^clip: complex params .*clip_by_global_norm" + remedy),
                        (jz.sophia(0.1), r"^sophia: complex params are not supported \(Sophia clips" + remedy),
                        (jz.sophia(0.1, clip_threshold=None), r"^sophia: complex params" + remedy),
                        (jz.scale_by_sophia(), r"^scale_by_sophia: complex params" + remedy)]:
        with pytest.raises(ValueError, match=message):
            tx.init(params)
    with pytest.raises(ValueError, match=r"^clip: complex params"):  # stateless: often updated without init
        jz.clip(1.0).update(params, jz.EmptyState())
    tx = jz.split_real_and_imaginary(jz.rprop(0.1))  # the way out: each part's own sign
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["w"].dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(updates["w"])))
    tx = jz.adopt(0.1, use_clipping=False)  # |g|^2 in the second moment: complex steps work
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["w"].dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(updates["w"])))


def test_a_one_element_array_hyperparameter_is_asked_for_as_a_scalar():
    """PyTorch (2.6+) takes lr=torch.tensor([0.1]); the message said "must be a finite real number" of a finite one."""
    with pytest.raises(ValueError, match=r"torch\.adam: lr must be a scalar \(a 0-d array\), got an array of shape "
                                         r"\(1,\); pass lr\.reshape\(\(\)\) or a float"):
        jz.torch.adam(lr=jnp.asarray([0.1]))
    with pytest.raises(ValueError, match=r"adam: b1 must be a scalar .* shape \(1, 1\)"):
        jz.adam(1e-3, b1=np.full((1, 1), 0.9))


@pytest.mark.parametrize("make", [lambda: jz.adamw(1e-2), lambda: jz.sgd(0.1, momentum=0.9), lambda: jz.lion(1e-3),
                                  lambda: jz.MultiSteps(jz.adam(1e-2), 2), lambda: jz.sgd(0.1)],
                         ids=["adamw", "momentum", "lion", "MultiSteps", "sgd"])
def test_an_update_where_the_state_was_built_with_a_none_param_names_its_path(make):
    # Equinox's filtered models: a leaf left out (None) when the state was built, given a gradient later, failed
    # with "unsupported operand type(s) for *: 'float' and 'NoneType'" (Optax's too), or plain SGD dropped it.
    params = {"w": jnp.ones(3), "p": None}
    tx = make()
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"the updates have arrays at \['p'\], where .* is None .*eqx\.filter"):
        updates, _ = tx.update({"w": jnp.ones(3), "p": jnp.asarray(0.0)}, state, params)
        jz.apply_updates(params, updates)
    updates, _ = tx.update({"w": jnp.ones(3), "p": None}, state, params)  # filtered as the params were: fine
    assert updates["p"] is None and jz.apply_updates(params, updates)["p"] is None


def test_init_on_a_tree_with_a_function_leaf_names_its_path():
    # An Equinox model not filtered to its arrays: "Cannot determine dtype of <custom_jvp object>" from inside
    # init, naming neither the leaf nor the fix (Optax: "zeros_like requires ndarray or scalar arguments").
    params = {"layers": [{"w": jnp.ones((2, 2)), "act": jax.nn.relu}], "scale": 1.0, "frozen": None}
    for tx in (jz.adamw(1e-2), jz.sgd(0.1, momentum=0.9), jz.lion(1e-3)):
        with pytest.raises(TypeError, match=r"^init: the params leaf at \['layers'\]\[0\]\['act'\] is custom_jvp .*"
                                            r"eqx\.filter\(model, eqx\.is_array\)"):
            tx.init(params)
    jz.adamw(1e-2).init({"layers": [{"w": jnp.ones((2, 2))}], "scale": 1.0, "frozen": None})  # arrays, numbers, None


@pytest.mark.parametrize("name", ["adafactor", "torch.adafactor", "novograd", "lbfgs", "galore"])
def test_optimizers_with_reshaped_state_take_none_params(name):
    # Their inits build state leaves of another shape than the param (tree.map_reshaped), which once called the
    # leaf's function on a None param ("zeros_like requires ndarray"); galore never took one.
    from tests.test_interop import RESHAPED_STATE

    params = {"w": jnp.ones((4, 6)), "frozen": None}
    tx = RESHAPED_STATE[name]()
    state = tx.init(params)
    grads = {"w": jnp.full((4, 6), 0.5), "frozen": None}
    updates, _ = tx.update(grads, state, params, value=jnp.asarray(1.0), grad=grads, value_fn=lambda p: 1.0)
    assert updates["frozen"] is None and np.all(np.isfinite(np.asarray(updates["w"])))
    with pytest.raises(ValueError, match=r"arrays at \['frozen'\]"):
        tx.update({**grads, "frozen": jnp.asarray(0.0)}, state, params)


def test_a_dtype_for_a_rate_or_decay_is_refused_not_taken_for_a_schedule():
    # jz.sgd(jnp.float32) stepped by the step count (a dtype is callable; 84 such arguments across the aliases, as in
    # Optax): a class is never a schedule.
    import inspect

    checked = 0
    for module, prefix in ((jz, ""), (jz.torch, "torch.")):
        for name in module.__all__:
            function = getattr(module, name)
            if not inspect.isfunction(function) or name == "optimistic_adam":  # deprecated: warns
                continue
            parameters = inspect.signature(function).parameters
            for argument in ("learning_rate", "lr", "weight_decay", "gamma"):
                others = [p for p in parameters.values() if p.default is p.empty and p.name != argument
                          and p.kind is p.POSITIONAL_OR_KEYWORD]
                if argument in parameters and not others:
                    with pytest.raises(ValueError, match=rf"{argument}\b.*float32"):
                        function(**{argument: jnp.float32})
                    checked += 1
    assert checked > 80


@pytest.mark.parametrize("make", [lambda: jz.clip_by_global_norm(1.0), jz.normalize, lambda: jz.mars_adamw(0.1)],
                         ids=["clip_by_global_norm", "normalize", "mars_adamw"])
def test_integer_gradients_are_not_truncated_to_zero(make):
    # Their float results were cast back to the gradients' int32: all zeros (Optax's clip_by_global_norm raises);
    # squares of int8 and int32 gradients wrapped around.
    for grads in (jnp.array([3, -4, 5]), jnp.array([100, 0, -7], jnp.int8), jnp.array([50000, 1, -3])):
        tx, params = make(), grads.astype(jnp.float32)
        update = tx.update(grads, tx.init(params), params)[0]
        assert update.dtype == jnp.float32
        np.testing.assert_allclose(update, tx.update(params, tx.init(params), params)[0], rtol=1e-6)
        assert bool(jnp.all((update != 0) == (grads != 0)))


def test_multisteps_says_what_should_skip_update_fn_must_return():
    # A bare bool failed at init with "cannot unpack non-iterable bool object".
    params = jnp.ones(3)
    with pytest.raises(ValueError, match=r"must return a pair \(skip, skip_state\).*got False"):
        jz.MultiSteps(jz.sgd(0.1), 2, should_skip_update_fn=lambda *args: False).init(params)
    tx = jz.MultiSteps(jz.sgd(0.1), 2, should_skip_update_fn=lambda *args: (jnp.ones(2, bool), ()))
    with pytest.raises(ValueError, match="must return a boolean scalar"):
        tx.update(params, tx.init(params), params)
    tx = jz.MultiSteps(jz.sgd(0.1), 2, should_skip_update_fn=optax.skip_not_finite)
    assert int(tx.update(params, tx.init(params), params)[1].mini_step) == 1


KRONECKER_STATE_MISMATCHES = {
    # (built by, used by): a crash inside JAX (incompatible shapes, zip() lengths), or the state's layout taken
    # silently.
    "shampoo merge_dims": (lambda: jz.scale_by_shampoo(), lambda: jz.scale_by_shampoo(merge_dims=False)),
    "shampoo max_precond_dim": (lambda: jz.scale_by_shampoo(), lambda: jz.scale_by_shampoo(max_precond_dim=1)),
    "shampoo precondition_1d": (lambda: jz.scale_by_shampoo(), lambda: jz.scale_by_shampoo(precondition_1d=True)),
    "shampoo no precondition_1d": (lambda: jz.scale_by_shampoo(precondition_1d=True), lambda: jz.scale_by_shampoo()),
    "soap merge_dims": (lambda: jz.scale_by_soap(), lambda: jz.scale_by_soap(merge_dims=True)),
    "soap blocking": (lambda: jz.scale_by_soap(max_precond_dim=2), lambda: jz.scale_by_soap(max_precond_dim=2,
                                                                                            blocking=False)),
    "soap no precondition_1d": (lambda: jz.scale_by_soap(precondition_1d=True), lambda: jz.scale_by_soap()),
    "psgd memory_save_mode": (lambda: jz.scale_by_psgd_kron(memory_save_mode="all_diag", key=0),
                              lambda: jz.scale_by_psgd_kron(key=0)),
    "psgd max_size_triangular": (lambda: jz.scale_by_psgd_kron(max_size_triangular=2, key=0),
                                 lambda: jz.scale_by_psgd_kron(key=0)),
}


@pytest.mark.parametrize("case", list(KRONECKER_STATE_MISMATCHES))
def test_a_kronecker_state_built_with_other_options_raises_naming_them(case):
    built_by, used_by = (make() for make in KRONECKER_STATE_MISMATCHES[case])
    params = {"w": jnp.ones((4, 6)), "b": jnp.ones(3)}
    from jaxopt_zoo.base import StateMismatchError

    with pytest.raises(StateMismatchError, match="built by an init with other options"):
        used_by.update(params, built_by.init(params), params)
