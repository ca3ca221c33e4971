# What the rollout engine recorded on a batch, batches joined, and DAPO's overlong penalty
# (adpo_batch_*rollout_logp, *truncated, *policy_version, adpo_batch_concat,
# adpo_soft_overlong_penalty of include/adpo.h). Included by ADPO.jl.

"The rollout engine's token log-probs: an n x t matrix (values where the loss mask is 0 are ignored)."
function set_rollout_logp!(b::Batch, logp::AbstractMatrix{<:Real})
    n, t = size(b)
    size(logp) == (n, t) || throw(DimensionMismatch("rollout_logp is $(size(logp)), the batch is $((n, t))"))
    v = _dense(Float64, logp)
    err = _err()
    st = adpo_batch_set_rollout_logp(b, v, length(v), err)
    _check(st, err, :adpo_batch_set_rollout_logp)
    return b
end

"The rollout log-probs (n x t, 0 where the loss mask is 0): the sampler's own for a sampled batch."
function rollout_logp(b::Batch)
    n, t = size(b)
    buf = Vector{Float64}(undef, n * t)
    err = _err()
    st = adpo_batch_get_rollout_logp(b, buf, length(buf), err)
    _check(st, err, :adpo_batch_get_rollout_logp)
    return _from_rowmajor(buf, n, t)
end

"Which rows stopped at max_new_tokens (n booleans), for a batch the host generated."
function set_truncated!(b::Batch, flags::AbstractVector{Bool})
    n = size(b, 1)
    length(flags) == n || throw(DimensionMismatch("truncated has $(length(flags)) flags, the batch has $n rows"))
    v = UInt8.(flags)
    err = _err()
    st = adpo_batch_set_truncated(b, v, length(v), err)
    _check(st, err, :adpo_batch_set_truncated)
    return b
end

"Which rows stopped at max_new_tokens (`Vector{Bool}`)."
function truncated(b::Batch)
    buf = Vector{UInt8}(undef, size(b, 1))
    err = _err()
    st = adpo_batch_get_truncated(b, buf, length(buf), err)
    _check(st, err, :adpo_batch_get_truncated)
    return map(!iszero, buf)
end

"The optimizer step of the policy that generated the batch."
function set_policy_version!(b::Batch, version::Integer)
    err = _err()
    st = adpo_batch_set_policy_version(b, UInt64(version), err)
    _check(st, err, :adpo_batch_set_policy_version)
    return b
end

"The batch's policy version (throws when it has none)."
function policy_version(b::Batch)
    out = Ref{UInt64}(0)
    err = _err()
    st = adpo_batch_get_policy_version(b, out, err)
    _check(st, err, :adpo_batch_get_policy_version)
    return Int(out[])
end

"""
    concat(batches...) -> Batch

One new batch of the rows of `batches` in order, each batch's groups kept apart, padded to the
longest row (a DAPO-style refill).
"""
function concat(batches::Batch...)
    isempty(batches) && throw(ArgumentError("concat needs at least one batch"))
    ptrs = Ptr{Cvoid}[b.ptr for b in batches]
    out = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = GC.@preserve batches adpo_batch_concat(ptrs, length(ptrs), out, err)
    _check(st, err, :adpo_batch_concat)
    return Batch(_Own(), out[])
end

"DAPO's soft overlong penalty of a completion of `length` tokens (0, then down to -factor)."
function soft_overlong_penalty(length::Integer, max_length::Integer, buffer::Integer, factor::Real)
    out = Ref{Float64}(0.0)
    err = _err()
    st = adpo_soft_overlong_penalty(UInt64(length), UInt64(max_length), UInt64(buffer), Float64(factor), out, err)
    _check(st, err, :adpo_soft_overlong_penalty)
    return out[]
end

# A step in two calls, for a loss the host defines (adpo_trainer_forward_backward,
# adpo_trainer_optim_step, adpo_trainer_token_logp).

"""
    forward_backward!(trainer, batch, grad_logp = nothing) -> TrainerMetrics

Runs the policy on `batch` and adds to its gradients: of the configured loss (`nothing`), or of
the host's loss given as dL/d(token log-prob), an n x t matrix (off the loss mask ignored), the
log-probs being `token_logp`'s. Gradients accumulate until `optim_step!`.
"""
function forward_backward!(tr::Trainer, b::Batch, grad_logp::Union{Nothing,AbstractMatrix{<:Real}}=nothing)
    g = grad_logp === nothing ? C_NULL : _dense(Float64, grad_logp)
    len = grad_logp === nothing ? 0 : length(grad_logp)
    m = Ref(_blank(TrainerMetrics))
    err = _err()
    st = adpo_trainer_forward_backward(tr, b, g, len, m, err)
    _check(st, err, :adpo_trainer_forward_backward)
    return m[]
end

"Clips and applies the gradient `forward_backward!` accumulated, then updates the anchor."
function optim_step!(tr::Trainer)
    m = Ref(_blank(TrainerMetrics))
    err = _err()
    st = adpo_trainer_optim_step(tr, m, err)
    _check(st, err, :adpo_trainer_optim_step)
    return m[]
end

"Token log-probs (n x t, 0 off the loss mask) of the batch under the current policy."
function token_logp(tr::Trainer, b::Batch)
    n, t = size(b)
    buf = Vector{Float64}(undef, n * t)
    err = _err()
    st = adpo_trainer_token_logp(tr, b, buf, length(buf), err)
    _check(st, err, :adpo_trainer_token_logp)
    return _from_rowmajor(buf, n, t)
end

"""
    forward_backward_dlpack!(trainer, batch, grad_logp::Ptr{Cvoid}) -> TrainerMetrics

`forward_backward!` with the gradient as a raw `DLManagedTensorVersioned*` ([n, t], floating,
CPU or CUDA; `C_NULL`: the configured loss). adpo takes ownership and calls its deleter exactly
once before returning, whatever the outcome: do not use or free it afterwards.
"""
function forward_backward_dlpack!(tr::Trainer, b::Batch, grad_logp::Ptr{Cvoid})
    m = Ref(_blank(TrainerMetrics))
    err = _err()
    st = adpo_trainer_forward_backward_dlpack(tr, b, grad_logp, m, err)
    _check(st, err, :adpo_trainer_forward_backward_dlpack)
    return m[]
end
