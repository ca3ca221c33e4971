"""
    ADPO

Julia binding of adpo (Anchored Direct Preference Optimization on libtorch) through its C ABI
(`include/adpo.h`, ABI version 1). Every function of the C API is wrapped, through the `ccall`
layer that `make bindings` generates from the header (`src/raw.jl`).

The shared library is `ENV["ADPO_LIB"]` when set, otherwise `target/release/libadpo.so` of the
repository this package lives in (`bindings/julia/../../target/release/libadpo.so`). It is
loaded, and its ABI version checked, when the package is loaded (`__init__`).

Objects: [`Objective`](@ref), [`Model`](@ref), [`Batch`](@ref), [`Trainer`](@ref),
[`Tokenizer`](@ref) (text and chat templates, `src/tokenizer.jl`). Each owns an
adpo handle, freed by a finalizer or earlier by `close`. Failing calls throw [`ADPOError`](@ref).

Data-parallel training: every rank joins with [`use_mpi!`](@ref) or [`use_allreduce!`](@ref)
(the host's own all-reduce, a Julia function), then steps on its own groups; [`world`](@ref)
tells a trainer's rank, [`has_mpi`](@ref) whether the library was built with MPI, and
[`ADPO.params`](@ref) copies a model's weights (to check that replicas agree).

Threads: adpo has no thread-local state, handles may be used from any thread and calls on one
handle are serialised inside the library, so Julia tasks (which may migrate between threads)
can share these objects freely. Only `close` must not race with other calls on the same object.

Matrices: the C API is row-major (n rows x t positions); this binding takes and returns ordinary
Julia `n x t` matrices and converts.
"""
module ADPO

using Libdl

export ADPOError, Objective, Model, Batch, Trainer, ObjectiveMetrics, TrainerMetrics,
       evaluate, evaluate_tokens, evaluate_dlpack, dlpack_release, metrics, metrics_json,
       vocab_size, set_rewards!, set_targets!, set_old_logp!, set_anchor_logp!,
       token_ids, loss_mask, group_ids, old_logp, step!, sequence_logp, save_checkpoint, load_checkpoint!,
       num_params, use_mpi!, use_allreduce!, world, has_mpi, load_model, save_model, save_adapter, save_gguf, save_adapter_gguf, completion,
       set_num_threads!, num_threads,
       Tokenizer, encode, encode_batch, decode, decode_batch, apply_chat_template, eos_ids,
       token_to_id, special_token,
       set_rollout_logp!, rollout_logp, set_truncated!, truncated, set_policy_version!, policy_version,
       concat, soft_overlong_penalty, forward_backward!, forward_backward_dlpack!, optim_step!, token_logp

# ----------------------------------------------------------------------------- C declarations
# Constants (ADPO_ABI_VERSION, ADPO_STATUS_*, ...), the metrics structs and one function per C
# export (adpo_*), generated from include/adpo.h by scripts/gen_bindings.py. This file wraps them.
include("raw.jl")

"""
    status_name(status) -> String

`"ADPO_STATUS_NON_FINITE"` for 5, and so on (`"ADPO_STATUS_UNKNOWN(n)"` for other values).
"""
status_name(status::Integer) =
    "ADPO_STATUS_" * get(adpo_status_names, Int32(status), "UNKNOWN($(status))")

# ----------------------------------------------------------------------------- library
const _LIBPATH = Ref{String}("")

# The library component of every ccall of raw.jl: a function call, evaluated when the ccall first
# runs (after __init__) and cached by Julia ("Non-constant Function Specifications").
function libadpo()
    p = _LIBPATH[]
    isempty(p) && error("ADPO: the adpo library is not loaded (ADPO.__init__ did not run or failed)")
    return p
end

"""
    default_library_path() -> String

`target/release/libadpo.so` of the repository that contains this package.
"""
function default_library_path()
    root = pkgdir(@__MODULE__)
    root === nothing && (root = normpath(joinpath(@__DIR__, "..")))
    return normpath(joinpath(root, "..", "..", "target", "release", "libadpo.so"))
end

"""
    library_path() -> String

`ENV["ADPO_LIB"]` if set and non-empty, else [`default_library_path`](@ref). A relative path
containing `/` is made absolute; a bare file name is left to the dynamic loader's search.
"""
function library_path()
    p = get(ENV, "ADPO_LIB", "")
    isempty(p) && return default_library_path()
    return (occursin('/', p) && !isabspath(p)) ? abspath(p) : p
end

function __init__()
    path = library_path()
    try
        Libdl.dlopen(path)
    catch e
        error("ADPO: cannot load the adpo C library from \"$path\": $(sprint(showerror, e)).\n" *
              "Build it (`make lib` at the repository root) or set ENV[\"ADPO_LIB\"] to the path of libadpo.so.")
    end
    _LIBPATH[] = path
    abi = adpo_abi_version()
    if abi != ADPO_ABI_VERSION
        error("ADPO: ABI mismatch: the library at \"$path\" has C ABI version $(abi), this binding " *
              "was written for ABI version $(ADPO_ABI_VERSION) (include/adpo.h). Rebuild the library " *
              "or use the binding that matches it.")
    end
    return nothing
end

"""
    version() -> String

`"adpo X.Y.Z (tch A.B.C, libtorch V)"` of the loaded library.
"""
function version()
    p = adpo_version()
    return p == C_NULL ? "" : unsafe_string(p)   # static storage: not freed
end

"The C ABI version of the loaded library (equals `ADPO_ABI_VERSION` once loaded)."
abi_version() = adpo_abi_version()

"Number of CUDA devices libtorch can use (0 without CUDA)."
cuda_device_count() = Int(adpo_cuda_device_count())

"libtorch's CPU thread count for the whole process (1 .. 4096)."
function set_num_threads!(n::Integer)
    err = _err()
    st = adpo_set_num_threads(n, err)
    _check(st, err, :adpo_set_num_threads)
    return nothing
end

"libtorch's CPU thread count."
num_threads() = Int(adpo_num_threads())

"""
    has_mpi() -> Bool

True when the loaded library can train over MPI (built with the cargo feature `mpi`, as make
builds it). Without it [`use_mpi!`](@ref) throws `ADPO_STATUS_UNSUPPORTED`; [`use_allreduce!`](@ref) works in every build.
"""
has_mpi() = adpo_has_mpi()

# ----------------------------------------------------------------------------- errors
"""
    ADPOError(status, message, func) <: Exception

A failed adpo call: `status` is the `adpo_status` code (`Int32`, compare with the
`ADPO.ADPO_STATUS_*` constants), `message` adpo's message, `func` the C function that failed.
"""
struct ADPOError <: Exception
    status::Int32
    message::String
    func::Symbol
end

function Base.showerror(io::IO, e::ADPOError)
    print(io, "ADPOError: ", e.func, ": ", status_name(e.status), " (", e.status, "): ", e.message)
end

_err() = Ref{Ptr{Cvoid}}(C_NULL)

# Turns a status and the adpo_error it came with into nothing or a thrown ADPOError; always
# frees the error object.
function _check(status::Int32, err::Base.RefValue{Ptr{Cvoid}}, func::Symbol)
    p = err[]
    err[] = C_NULL
    if status == ADPO_STATUS_OK
        p == C_NULL || adpo_error_free(p)
        return nothing
    end
    p == C_NULL && throw(ADPOError(status, "(adpo returned no error object)", func))
    msg, st = try
        m = adpo_error_message(p)
        # the message is valid until adpo_error_free: copy it first
        (m == C_NULL ? "" : unsafe_string(m),
         adpo_error_status(p))
    finally
        adpo_error_free(p)
    end
    throw(ADPOError(st, msg, func))
end

# _check for trainer calls that may run a Julia all-reduce callback: an ADPO_STATUS_COMMUNICATION
# error gets the exception the callback threw (if any) added to its message.
function _check(status::Int32, err::Base.RefValue{Ptr{Cvoid}}, func::Symbol, comm)
    cause = comm isa _Allreduce ? _take_error!(comm) : nothing
    try
        _check(status, err, func)
    catch e
        if e isa ADPOError && e.status == ADPO_STATUS_COMMUNICATION && cause !== nothing
            throw(ADPOError(e.status, e.message * " (callback error: " * sprint(showerror, cause) * ")", e.func))
        end
        rethrow()
    end
    return nothing
end

"""
    ADPO.test_panic()

Calls `adpo_test_panic`, which panics inside the library: always throws an [`ADPOError`](@ref)
with status `ADPO_STATUS_PANIC`. For testing error handling.
"""
function test_panic()
    err = _err()
    st = adpo_test_panic(err)
    _check(st, err, :adpo_test_panic)
    return nothing
end

# ----------------------------------------------------------------------------- helpers
_ornull(x) = x === nothing ? C_NULL : x

function _nul_free(s::AbstractString, what::AbstractString)
    str = String(s)
    occursin('\0', str) && throw(ArgumentError("$what contains a NUL character"))
    return str
end

_cstr_or_null(::Nothing, what) = C_NULL
_cstr_or_null(s::AbstractString, what) = _nul_free(s, what)

function _len_check(v, name::AbstractString, n)
    n === nothing && return v
    length(v) == n || throw(DimensionMismatch("$name has $(length(v)) values, expected $n"))
    return v
end

# Dense Vector{T} (no copy when x already is one).
_dense(::Type{T}, x::AbstractVector) where {T} = convert(Vector{T}, x)
# Row-major flattening of an n x t matrix (the C layout).
_dense(::Type{T}, x::AbstractMatrix) where {T} = convert(Vector{T}, vec(permutedims(x)))

_f64(x, name, n=nothing) = _len_check(_dense(Float64, x), name, n)
_i64(x, name, n=nothing) = _len_check(_dense(Int64, x), name, n)
_opt_f64(::Nothing, name, n) = C_NULL
_opt_f64(x, name, n) = _f64(x, name, n)

# n x t matrix from a row-major buffer of length n * t.
_from_rowmajor(buf::AbstractVector, n::Integer, t::Integer) = permutedims(reshape(buf, Int(t), Int(n)))

# ----------------------------------------------------------------------------- JSON configs
# Configs are JSON strings; NamedTuples and Dicts are encoded with this small writer.
_json_arg(::Nothing) = C_NULL
_json_arg(s::AbstractString) = _nul_free(s, "JSON config")
_json_arg(x) = _nul_free(to_json(x), "JSON config")

"""
    ADPO.to_json(x) -> String

JSON text of `x` (NamedTuple, Dict, vector, tuple, string, symbol, number, Bool, nothing), as
accepted wherever a config is expected: `Objective((reward_transform = "raw",))`.
"""
function to_json(x)
    io = IOBuffer()
    _write_json(io, x)
    return String(take!(io))
end

_write_json(io::IO, ::Nothing) = print(io, "null")
_write_json(io::IO, x::Bool) = print(io, x ? "true" : "false")
_write_json(io::IO, x::Integer) = print(io, x)
function _write_json(io::IO, x::AbstractFloat)
    isfinite(x) || throw(ArgumentError("JSON cannot represent $x"))
    print(io, Float64(x))
end
_write_json(io::IO, x::Symbol) = _write_json(io, String(x))
function _write_json(io::IO, s::AbstractString)
    print(io, '"')
    for c in s
        if c == '"'
            print(io, "\\\"")
        elseif c == '\\'
            print(io, "\\\\")
        elseif c < ' '
            print(io, "\\u", string(UInt32(c), base=16, pad=4))
        else
            print(io, c)
        end
    end
    print(io, '"')
end
function _write_json(io::IO, x::Union{AbstractVector,Tuple})
    print(io, '[')
    for (i, v) in enumerate(x)
        i > 1 && print(io, ',')
        _write_json(io, v)
    end
    print(io, ']')
end
function _write_json(io::IO, x::Union{NamedTuple,AbstractDict})
    print(io, '{')
    first = true
    for (k, v) in pairs(x)
        first || print(io, ',')
        first = false
        _write_json(io, string(k))
        print(io, ':')
        _write_json(io, v)
    end
    print(io, '}')
end
_write_json(io::IO, x) = throw(ArgumentError("cannot encode a $(typeof(x)) as JSON"))

# Takes ownership of a string adpo returned (char **out_json): copies it, frees it.
function _take_string(out::Base.RefValue{Ptr{UInt8}})
    p = out[]
    p == C_NULL && return ""
    out[] = C_NULL
    try
        return unsafe_string(p)
    finally
        adpo_string_free(p)
    end
end

# ----------------------------------------------------------------------------- metrics structs
# The generated C structs (same fields, same layout): adpo writes at most struct_size bytes and
# sets struct_size to what it wrote.

"""
    ObjectiveMetrics

`adpo_objective_metrics`: metrics of an objective's last evaluation. Values that do not apply
to the loss are NaN.
"""
const ObjectiveMetrics = adpo_objective_metrics

"""
    TrainerMetrics

`adpo_trainer_metrics`: metrics of a trainer step (`reduce_time_ms`: of `step_time_ms`, spent
in collectives, 0 in one process). Values that do not apply are NaN.
"""
const TrainerMetrics = adpo_trainer_metrics

# struct_size = sizeof(T), floats NaN, integers 0: what a call that writes nothing leaves.
function _blank(::Type{T}) where {T}
    vals = ntuple(fieldcount(T)) do i
        FT = fieldtype(T, i)
        i == 1 ? UInt32(sizeof(T)) : (FT <: AbstractFloat ? FT(NaN) : zero(FT))
    end
    return T(vals...)
end

# ----------------------------------------------------------------------------- handles
abstract type Handle end

Base.isopen(h::Handle) = h.ptr != C_NULL

# Passing a handle object to a ccall argument of type Ptr{Cvoid} passes its pointer and keeps
# the object (so its finalizer) alive for the duration of the call.
function Base.unsafe_convert(::Type{Ptr{Cvoid}}, h::Handle)
    p = h.ptr
    p == C_NULL && throw(ArgumentError("this ADPO.$(nameof(typeof(h))) has been closed"))
    return p
end

Base.show(io::IO, h::Handle) =
    print(io, "ADPO.", nameof(typeof(h)), isopen(h) ? "(" * string(h.ptr) * ")" : "(closed)")

struct _Own end   # marks the inner constructors that adopt a handle adpo returned

"""
    Objective(config = nothing)

An adpo objective. `config`: `nothing` (all defaults), a JSON string, or a NamedTuple / Dict
encoded to JSON, e.g. `Objective((reward_transform = "raw",))`. Unknown keys are an error.
Free with `close` (or leave it to the finalizer).
"""
mutable struct Objective <: Handle
    ptr::Ptr{Cvoid}
    function Objective(::_Own, p::Ptr{Cvoid})
        p == C_NULL && error("adpo returned a NULL objective handle")
        return finalizer(_free!, new(p))
    end
end

function Objective(config=nothing)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = adpo_objective_new(_json_arg(config), out, err)
    _check(st, err, :adpo_objective_new)
    return Objective(_Own(), out[])
end

function _free!(o::Objective)
    p = o.ptr
    if p != C_NULL
        o.ptr = C_NULL
        adpo_objective_free(p)
    end
    return nothing
end

"""
    Model(path; device = nothing)

A TorchScript causal LM (`torch.jit.script(model).save(path)`). `device`: `nothing`/"cpu",
"cuda" or "cuda:N". A trainer keeps its own reference: closing the model afterwards is fine.
"""
mutable struct Model <: Handle
    ptr::Ptr{Cvoid}
    function Model(::_Own, p::Ptr{Cvoid})
        p == C_NULL && error("adpo returned a NULL model handle")
        return finalizer(_free!, new(p))
    end
end

function Model(path::AbstractString; device::Union{Nothing,AbstractString}=nothing)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = adpo_model_load(String(path), _cstr_or_null(device, "device"), out, err)
    _check(st, err, :adpo_model_load)
    return Model(_Own(), out[])
end

"""
    load_model(path, options_json) -> Model

Loads a Hugging Face checkpoint directory (or a TorchScript file) with options as JSON, e.g.
`"{\"dtype\": \"bfloat16\", \"device\": \"cuda:0\"}"` (`adpo_model_load_options`).
"""
function load_model(path::AbstractString, options_json::AbstractString)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = adpo_model_load_options(String(path), _nul_free(options_json, "options_json"), out, err)
    _check(st, err, :adpo_model_load_options)
    return Model(_Own(), out[])
end

"""
    save_model(model, dir)

Writes the model with its current weights as a Hugging Face checkpoint directory that
transformers' `from_pretrained` reads (checkpoint-directory models only).
"""
function save_model(m::Model, dir::AbstractString)
    err = _err()
    st = adpo_model_save(m, _nul_free(dir, "dir"), err)
    _check(st, err, :adpo_model_save)
    return nothing
end

"""
    save_adapter(model, dir)

Writes a LoRA policy's adapters as a PEFT adapter directory (adapter_config.json,
adapter_model.safetensors) that `peft.PeftModel.from_pretrained(base, dir)` loads.
"""
function save_adapter(m::Model, dir::AbstractString)
    err = _err()
    st = adpo_model_save_adapter(m, _nul_free(dir, "dir"), err)
    _check(st, err, :adpo_model_save_adapter)
    return nothing
end

"""
    save_gguf(model, path; options_json = nothing)

Writes the model (a LoRA policy merged; the model itself unchanged) as a GGUF file that
llama.cpp, Ollama, transformers and `load_model` read. `options_json`:
`{"dtype": "f32" | "f16" | "bf16" | "q8_0"}` (default f32). Atomic; an existing path is
replaced only when it is a GGUF file.
"""
function save_gguf(m::Model, path::AbstractString; options_json=nothing)
    err = _err()
    st = adpo_model_save_gguf(m, _nul_free(path, "path"), _cstr_or_null(options_json, "options_json"), err)
    _check(st, err, :adpo_model_save_gguf)
    return nothing
end

"""
    save_adapter_gguf(model, path; options_json = nothing)

Writes a LoRA policy's adapters as a llama.cpp LoRA adapter GGUF (`llama-cli --lora`, Ollama's
`ADAPTER`). Options as `save_gguf`'s.
"""
function save_adapter_gguf(m::Model, path::AbstractString; options_json=nothing)
    err = _err()
    st = adpo_model_save_adapter_gguf(m, _nul_free(path, "path"), _cstr_or_null(options_json, "options_json"), err)
    _check(st, err, :adpo_model_save_adapter_gguf)
    return nothing
end

function _free!(m::Model)
    p = m.ptr
    if p != C_NULL
        m.ptr = C_NULL
        adpo_model_free(p)
    end
    return nothing
end

"Vocabulary size V of the model's logits."
function vocab_size(m::Model)
    out = Ref{Int64}(0)
    err = _err()
    st = adpo_model_vocab_size(m, out, err)
    _check(st, err, :adpo_model_vocab_size)
    return Int(out[])
end

"Number of parameter values of the model, all tensors together."
function num_params(m::Model)
    out = Ref{Csize_t}(0)
    err = _err()
    st = adpo_model_num_params(m, out, err)
    _check(st, err, :adpo_model_num_params)
    return Int(out[])
end

"""
    ADPO.params(model::Model) -> Vector{Float64}

A copy of the model's current parameters (a policy's as trained so far), every tensor flattened
in the module's parameter order: [`num_params`](@ref) values. For checks such as "every replica
holds the same weights". Not exported (the name is common): call it as `ADPO.params`.
"""
function params(m::Model)
    n = num_params(m)
    out = Vector{Float64}(undef, n)
    n == 0 && return out
    err = _err()
    st = adpo_model_get_params(m, out, length(out), err)
    _check(st, err, :adpo_model_get_params)
    return out
end

"""
    Batch(ids, loss_mask, group_ids; attention_mask = nothing, rewards = nothing,
          targets = nothing, old_logp = nothing, anchor_logp = nothing)

A batch of n candidates x t positions. `ids`: n x t integer matrix (token ids >= 0);
`loss_mask`: n x t (Bool or 0/1; 1 at column j means the token at j counts, so column 1 must
be 0); `attention_mask`: n x t or `nothing` (all ones); `group_ids`: n integers (candidates of
one prompt share an id). Rewards or targets must be set before [`step!`](@ref).
"""
mutable struct Batch <: Handle
    ptr::Ptr{Cvoid}
    function Batch(::_Own, p::Ptr{Cvoid})
        p == C_NULL && error("adpo returned a NULL batch handle")
        return finalizer(_free!, new(p))
    end
end

function Batch(ids::AbstractMatrix{<:Integer}, loss_mask::AbstractMatrix, group_ids::AbstractVector{<:Integer};
               attention_mask::Union{Nothing,AbstractMatrix}=nothing, rewards=nothing, targets=nothing,
               old_logp=nothing, anchor_logp=nothing)
    n, t = size(ids)
    size(loss_mask) == (n, t) || throw(DimensionMismatch("loss_mask is $(size(loss_mask)), ids is $((n, t))"))
    attention_mask === nothing || size(attention_mask) == (n, t) ||
        throw(DimensionMismatch("attention_mask is $(size(attention_mask)), ids is $((n, t))"))
    ids_c = _dense(Int64, ids)
    lm_c = _dense(UInt8, loss_mask)
    am_c = attention_mask === nothing ? C_NULL : _dense(UInt8, attention_mask)
    gid_c = _i64(group_ids, "group_ids", n)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = adpo_batch_new(n, t, ids_c, am_c, lm_c, gid_c, out, err)
    _check(st, err, :adpo_batch_new)
    b = Batch(_Own(), out[])
    rewards === nothing || set_rewards!(b, rewards)
    targets === nothing || set_targets!(b, targets)
    old_logp === nothing || set_old_logp!(b, old_logp)
    anchor_logp === nothing || set_anchor_logp!(b, anchor_logp)
    return b
end

function _free!(b::Batch)
    p = b.ptr
    if p != C_NULL
        b.ptr = C_NULL
        adpo_batch_free(p)
    end
    return nothing
end

"`(n, t)`: the batch's candidates and positions."
function Base.size(b::Batch)
    n = Ref{Csize_t}(0)
    t = Ref{Csize_t}(0)
    err = _err()
    st = adpo_batch_shape(b, n, t, err)
    _check(st, err, :adpo_batch_shape)
    return (Int(n[]), Int(t[]))
end
Base.size(b::Batch, d::Integer) = size(b)[d]

"Rewards of the n candidates (finite). Replaces targets if they were set."
function set_rewards!(b::Batch, rewards::AbstractVector{<:Real})
    v = _f64(rewards, "rewards", size(b, 1))
    err = _err()
    st = adpo_batch_set_rewards(b, v, length(v), err)
    _check(st, err, :adpo_batch_set_rewards)
    return b
end

"Explicit target distribution (n values >= 0 summing to 1 over each group). Replaces rewards."
function set_targets!(b::Batch, targets::AbstractVector{<:Real})
    v = _f64(targets, "targets", size(b, 1))
    err = _err()
    st = adpo_batch_set_targets(b, v, length(v), err)
    _check(st, err, :adpo_batch_set_targets)
    return b
end

# n values (vector) or n x t (matrix, or a row-major vector of n * t).
function _seq_or_tokens(b::Batch, x, name)
    n, t = size(b)
    if x isa AbstractMatrix
        size(x) == (n, t) || throw(DimensionMismatch("$name is $(size(x)), the batch is $((n, t))"))
        return _dense(Float64, x)
    end
    v = _f64(x, name)
    length(v) == n || length(v) == n * t ||
        throw(DimensionMismatch("$name has $(length(v)) values, expected n = $n or n * t = $(n * t)"))
    return v
end

"Sampling-time log-probs: n values (per sequence) or an n x t matrix (per token)."
function set_old_logp!(b::Batch, old_logp::AbstractVecOrMat{<:Real})
    v = _seq_or_tokens(b, old_logp, "old_logp")
    err = _err()
    st = adpo_batch_set_old_logp(b, v, length(v), err)
    _check(st, err, :adpo_batch_set_old_logp)
    return b
end

"Precomputed anchor log-probs: n values or an n x t matrix (then no reference forward runs)."
function set_anchor_logp!(b::Batch, anchor_logp::AbstractVecOrMat{<:Real})
    v = _seq_or_tokens(b, anchor_logp, "anchor_logp")
    err = _err()
    st = adpo_batch_set_anchor_logp(b, v, length(v), err)
    _check(st, err, :adpo_batch_set_anchor_logp)
    return b
end

"The n x t token ids (`Matrix{Int64}`)."
function token_ids(b::Batch)
    n, t = size(b)
    buf = Vector{Int64}(undef, n * t)
    err = _err()
    st = adpo_batch_get_ids(b, buf, length(buf), err)
    _check(st, err, :adpo_batch_get_ids)
    return _from_rowmajor(buf, n, t)
end

# One adpo_batch_get_completion call; `buf` may be C_NULL with cap 0 (the size query).
function _completion_call(b::Batch, row::Integer, buf, cap::Integer, n::Base.RefValue{Csize_t})
    err = _err()
    st = adpo_batch_get_completion(b, row, buf, cap, n, err)
    _check(st, err, :adpo_batch_get_completion)
    return nothing
end

"""
    completion(batch, row) -> Vector{Int64}

The generated tokens of `row` (1-based) of a sampled batch: its loss-masked tokens, the ending
EOS included, to decode and score.
"""
function completion(b::Batch, row::Integer)
    n = Ref{Csize_t}(0)
    _completion_call(b, row - 1, C_NULL, 0, n)
    ids = Vector{Int64}(undef, n[])
    isempty(ids) || _completion_call(b, row - 1, ids, length(ids), n)
    return ids
end

"The n x t loss mask (`Matrix{Bool}`, true = generated/scored token)."
function loss_mask(b::Batch)
    n, t = size(b)
    buf = Vector{UInt8}(undef, n * t)
    err = _err()
    st = adpo_batch_get_loss_mask(b, buf, length(buf), err)
    _check(st, err, :adpo_batch_get_loss_mask)
    return _from_rowmajor(map(!iszero, buf), n, t)
end

"""
    old_logp(b::Batch) -> Matrix{Float64}

The sampling-time log-probs per token (n × t, 0 where the loss mask is 0), as a batch from
`ADPO.sample` holds them: a row's sum is log π(completion | prompt) at temperature 1. A batch
whose old log-probs were set per sequence throws.
"""
function old_logp(b::Batch)
    n, t = size(b)
    buf = Vector{Float64}(undef, n * t)
    err = _err()
    st = adpo_batch_get_old_logp(b, buf, length(buf), err)
    _check(st, err, :adpo_batch_get_old_logp)
    return _from_rowmajor(buf, n, t)
end

"The n group ids (`Vector{Int64}`)."
function group_ids(b::Batch)
    n = size(b, 1)
    buf = Vector{Int64}(undef, n)
    err = _err()
    st = adpo_batch_get_group_ids(b, buf, length(buf), err)
    _check(st, err, :adpo_batch_get_group_ids)
    return buf
end

"""
    Trainer(policy::Model, reference::Union{Model,Nothing} = nothing, config = nothing)

Trains `policy` in place. `config`: JSON string, NamedTuple/Dict or `nothing` (defaults); the
trainer keys (seq_logp, micro_batch_rows, epochs_per_batch, seed, anchor, optimizer, grad_clip,
schedule) plus every objective key.
"""
mutable struct Trainer <: Handle
    ptr::Ptr{Cvoid}
    # What the communicator of use_allreduce! refers to (an _Allreduce, or the CFunction of a
    # raw callback): kept alive here as long as adpo may call it.
    allreduce::Any
    function Trainer(::_Own, p::Ptr{Cvoid})
        p == C_NULL && error("adpo returned a NULL trainer handle")
        return finalizer(_free!, new(p, nothing))
    end
end

function Trainer(policy::Model, reference::Union{Model,Nothing}=nothing, config=nothing)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = adpo_trainer_new(policy, _ornull(reference), _json_arg(config), out, err)
    _check(st, err, :adpo_trainer_new)
    return Trainer(_Own(), out[])
end

function _free!(tr::Trainer)
    p = tr.ptr
    if p != C_NULL
        tr.ptr = C_NULL
        adpo_trainer_free(p)
        tr.allreduce = nothing   # adpo no longer calls it
    end
    return nothing
end

"Frees the adpo handle now (idempotent); the object is unusable afterwards."
Base.close(h::Handle) = _free!(h)

# ----------------------------------------------------------------------------- objective
"""
    evaluate(obj, logp, anchor_logp, group_ids; rewards = nothing, targets = nothing,
             policy_entropy = nothing, grad = true, scores = true)
        -> (loss = Float64, grad = Vector{Float64} or nothing, scores = Vector{Float64} or nothing)

Evaluates the objective on n candidates. Exactly one of `rewards`, `targets` must be given.
`group_ids`: any integer ids, any order; groups of one candidate contribute nothing.
`policy_entropy` (n values, for the adaptive tau rule "smooth_hybrid") selects
`adpo_objective_eval_entropy`.
"""
function evaluate(obj::Objective, logp::AbstractVector{<:Real}, anchor_logp::AbstractVector{<:Real},
                  group_ids::AbstractVector{<:Integer}; rewards=nothing, targets=nothing,
                  policy_entropy=nothing, grad::Bool=true, scores::Bool=true)
    lp = _f64(logp, "logp")
    n = length(lp)
    an = _f64(anchor_logp, "anchor_logp", n)
    gi = _i64(group_ids, "group_ids", n)
    r = _opt_f64(rewards, "rewards", n)
    tg = _opt_f64(targets, "targets", n)
    g = grad ? fill(NaN, n) : nothing
    s = scores ? fill(NaN, n) : nothing
    loss = Ref{Cdouble}(NaN)
    err = _err()
    if policy_entropy === nothing
        st = adpo_objective_eval(obj, n, lp, an, r, tg, gi, loss, _ornull(g), _ornull(s), err)
        _check(st, err, :adpo_objective_eval)
    else
        pe = _f64(policy_entropy, "policy_entropy", n)
        st = adpo_objective_eval_entropy(obj, n, lp, an, r, tg, gi, pe, loss, _ornull(g), _ornull(s), err)
        _check(st, err, :adpo_objective_eval_entropy)
    end
    return (loss = loss[], grad = g, scores = s)
end

"""
    evaluate_tokens(obj, logp, old_logp, mask, rewards, group_ids; ref_logp = nothing,
                    grad = true, advantages = true)
        -> (loss = Float64, grad = n x t Matrix or nothing, advantages = Vector or nothing)

GRPO baseline at token level (the objective's loss must be "grpo"). `logp`, `old_logp`,
`ref_logp` (may be `nothing` when beta_kl = 0) and `mask` (1 = token counts) are n x t
matrices; `rewards` and `group_ids` have n entries.
"""
function evaluate_tokens(obj::Objective, logp::AbstractMatrix{<:Real}, old_logp::AbstractMatrix{<:Real},
                         mask::AbstractMatrix, rewards::AbstractVector{<:Real},
                         group_ids::AbstractVector{<:Integer}; ref_logp=nothing,
                         grad::Bool=true, advantages::Bool=true)
    n, t = size(logp)
    for (name, x) in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp))
        x === nothing || size(x) == (n, t) ||
            throw(DimensionMismatch("$name is $(size(x)), logp is $((n, t))"))
    end
    lp = _dense(Float64, logp)
    old = _dense(Float64, old_logp)
    ref = ref_logp === nothing ? C_NULL : _dense(Float64, ref_logp)
    m = _dense(Float64, mask)
    r = _f64(rewards, "rewards", n)
    gi = _i64(group_ids, "group_ids", n)
    g = grad ? fill(NaN, n * t) : nothing
    adv = advantages ? fill(NaN, n) : nothing
    loss = Ref{Cdouble}(NaN)
    err = _err()
    st = adpo_objective_eval_tokens(obj, n, t, lp, old, ref, m, r, gi, loss, _ornull(g), _ornull(adv), err)
    _check(st, err, :adpo_objective_eval_tokens)
    return (loss = loss[], grad = g === nothing ? nothing : _from_rowmajor(g, n, t), advantages = adv)
end

"""
    evaluate_dlpack(obj, logp, anchor_logp, group_ids; rewards = C_NULL, targets = C_NULL)
        -> (loss = Float64, grad = Ptr{Cvoid})

`adpo_objective_eval_dlpack` on raw `DLManagedTensorVersioned*` pointers (DLPack >= 1.0).
adpo takes ownership of every non-NULL input and calls its deleter exactly once before
returning, whatever the outcome: do not use or free them afterwards. Exactly one of `rewards`,
`targets` is non-NULL. `grad` is a new DLPack tensor owned by the caller: release it with
[`dlpack_release`](@ref) (or hand it to a DLPack consumer).
"""
function evaluate_dlpack(obj::Objective, logp::Ptr{Cvoid}, anchor_logp::Ptr{Cvoid}, group_ids::Ptr{Cvoid};
                         rewards::Ptr{Cvoid}=C_NULL, targets::Ptr{Cvoid}=C_NULL)
    loss = Ref{Cdouble}(NaN)
    grad = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = adpo_objective_eval_dlpack(obj, logp, anchor_logp, rewards, targets, group_ids, loss, grad, err)
    _check(st, err, :adpo_objective_eval_dlpack)
    return (loss = loss[], grad = grad[])
end

"""
    dlpack_release(p::Ptr{Cvoid})

Calls the deleter of a `DLManagedTensorVersioned*` (as returned by [`evaluate_dlpack`](@ref)).
NULL is a no-op.
"""
function dlpack_release(p::Ptr{Cvoid})
    p == C_NULL && return nothing
    # struct { DLPackVersion version (2 x uint32); void *manager_ctx; void (*deleter)(self); ... }
    deleter = unsafe_load(convert(Ptr{Ptr{Cvoid}}, p + 8 + sizeof(Ptr{Cvoid})))
    deleter == C_NULL || ccall(deleter, Cvoid, (Ptr{Cvoid},), p)
    return nothing
end

"Metrics of the objective's last successful evaluation ([`ObjectiveMetrics`](@ref))."
function metrics(obj::Objective)
    out = Ref(_blank(ObjectiveMetrics))
    err = _err()
    st = adpo_objective_get_metrics(obj, out, err)
    _check(st, err, :adpo_objective_get_metrics)
    return out[]
end

"Metrics of the last evaluation (objective) or step (trainer) as a JSON string (NaN as null)."
function metrics_json(obj::Objective)
    out = Ref{Ptr{UInt8}}(C_NULL)
    err = _err()
    st = adpo_objective_metrics_json(obj, out, err)
    _check(st, err, :adpo_objective_metrics_json)
    return _take_string(out)
end

function metrics_json(tr::Trainer)
    out = Ref{Ptr{UInt8}}(C_NULL)
    err = _err()
    st = adpo_trainer_metrics_json(tr, out, err)
    _check(st, err, :adpo_trainer_metrics_json)
    return _take_string(out)
end

# ----------------------------------------------------------------------------- trainer
"""
    step!(trainer, batch; metrics = true) -> TrainerMetrics or nothing

One ADPO step on `batch` (epochs_per_batch optimizer updates). In data-parallel training every
rank calls it with its own groups: the update is that of all ranks' groups together, the metrics
are over all ranks, and a failure on any rank is thrown by every rank, before any weight changes.
"""
function step!(tr::Trainer, b::Batch; metrics::Bool=true)
    m = metrics ? Ref(_blank(TrainerMetrics)) : nothing
    err = _err()
    st = adpo_trainer_step(tr, b, _ornull(m), err)
    _check(st, err, :adpo_trainer_step, tr.allreduce)
    return m === nothing ? nothing : m[]
end

"""
    ADPO.sample(trainer, prompts, k; sampling = nothing) -> Batch

Samples `k` candidates for each prompt (a vector of token-id vectors) from the policy.
`sampling`: JSON string / NamedTuple / Dict (temperature, top_k, top_p, max_new_tokens, eos_id,
pad_id, seed) or `nothing`. The batch has `length(prompts) * k` rows, group id = prompt index
(0-based), loss mask on the generated tokens, per-token old_logp set; set its rewards and pass
it to [`step!`](@ref). Not exported (the name is common): call it as `ADPO.sample`.
"""
function sample(tr::Trainer, prompts::AbstractVector{<:AbstractVector{<:Integer}}, k::Integer;
                sampling=nothing)
    lengths = Csize_t[length(p) for p in prompts]
    tokens = Int64[]
    for p in prompts
        append!(tokens, p)
    end
    out = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = adpo_trainer_sample(tr, tokens, lengths, length(prompts), k, _json_arg(sampling), out, err)
    _check(st, err, :adpo_trainer_sample)
    return Batch(_Own(), out[])
end

"Sequence log-probs (seq_logp reduction) of the batch's n rows under the current policy."
function sequence_logp(tr::Trainer, b::Batch)
    n = size(b, 1)
    out = Vector{Float64}(undef, n)
    err = _err()
    st = adpo_trainer_sequence_logp(tr, b, out, length(out), err)
    _check(st, err, :adpo_trainer_sequence_logp)
    return out
end

"""
    save_checkpoint(trainer, path)

Writes one safetensors file at `path` (policy weights under their names, trainer state under
`__adpo__.` keys), published atomically. In data-parallel training every rank calls it, only
rank 0 writes, and every rank returns rank 0's outcome.
"""
function save_checkpoint(tr::Trainer, path::AbstractString)
    err = _err()
    st = adpo_trainer_save(tr, String(path), err)
    _check(st, err, :adpo_trainer_save, tr.allreduce)
    return path
end

"""
    load_checkpoint!(trainer, path)

Restores a checkpoint written by [`save_checkpoint`](@ref). A missing, corrupt or mismatched
checkpoint throws (`ADPO_STATUS_CHECKPOINT`) and leaves the trainer as it was. In data-parallel
training every rank calls it: rank 0 reads the file and sends the state to the others.
"""
function load_checkpoint!(tr::Trainer, path::AbstractString)
    err = _err()
    st = adpo_trainer_load(tr, String(path), err)
    _check(st, err, :adpo_trainer_load, tr.allreduce)
    return tr
end

# ----------------------------------------------------------------------------- data parallel
"""
    ADPO.DLDataType(code, bits, lanes)

Mirror of DLPack's `DLDataType` (include/dlpack.h), as an all-reduce callback receives it: `code`
2 (`kDLFloat`) and `bits` 32 or 64 for the buffers adpo reduces. Not exported (DLPack packages
define the same name).
"""
struct DLDataType
    code::UInt8
    bits::UInt8
    lanes::UInt16
end

"""
    ADPO.DLDevice(device_type, device_id)

Mirror of DLPack's `DLDevice`: `device_type` 1 (`ADPO.kDLCPU`) or 2 (`ADPO.kDLCUDA`). Not
exported.
"""
struct DLDevice
    device_type::Int32
    device_id::Int32
end

"DLPack codes of the all-reduce buffers: float data type, CPU and CUDA devices."
const kDLFloat = 0x02
const kDLCPU = Int32(1)
const kDLCUDA = Int32(2)

"""
    use_mpi!(trainer, mpi_comm = C_NULL) -> trainer

Data-parallel training over MPI. `mpi_comm` is the address of a C `MPI_Comm` (a `Ptr{Cvoid}`, or
a `Ref` holding the communicator's C handle), or `C_NULL` for `MPI_COMM_WORLD`; adpo duplicates
it for its own traffic. Collective: every rank of the communicator calls it (MPI is initialised
if nobody has). Rank 0's weights, optimizer and anchor state are copied to every rank. Throws
`ADPO_STATUS_UNSUPPORTED` when the library was built without MPI (see [`has_mpi`](@ref)).
"""
function use_mpi!(tr::Trainer, mpi_comm::Union{Ptr{Cvoid},Base.RefValue}=C_NULL)
    err = _err()
    st = adpo_trainer_use_mpi(tr, mpi_comm, err)
    _check(st, err, :adpo_trainer_use_mpi)
    tr.allreduce = nothing   # a previous callback was released by adpo
    return tr
end

"""
    world(trainer) -> (rank = Int, size = Int)

This trainer's rank and number of ranks: `(rank = 0, size = 1)` when it trains alone.
"""
function world(tr::Trainer)
    rank = Ref{Int32}(0)
    size = Ref{Int32}(0)
    err = _err()
    st = adpo_trainer_world(tr, rank, size, err)
    _check(st, err, :adpo_trainer_world)
    return (rank = Int(rank[]), size = Int(size[]))
end

# The Julia function of use_allreduce!, and the exception it last threw. Its address is the
# userdata adpo passes back to the trampoline; the Trainer keeps it alive (field `allreduce`).
mutable struct _Allreduce
    f::Any
    error::Any
end

function _take_error!(a::_Allreduce)
    e = a.error
    a.error = nothing
    return e
end

# The C-callable trampoline (adpo_allreduce_fn) behind every Julia all-reduce function. It must
# not throw into C: exceptions are kept for the error message and reported as -1.
function _allreduce_trampoline(userdata::Ptr{Cvoid}, buffer::Ptr{Cvoid}, count::Csize_t,
                               dtype::DLDataType, device::DLDevice)::Int32
    a = unsafe_pointer_to_objref(userdata)::_Allreduce
    try
        rc = a.f(buffer, Int(count), dtype, device)
        rc isa Integer && rc != 0 && return Int32(clamp(rc, typemin(Int32), typemax(Int32)))
        return Int32(0)
    catch e
        a.error = e
        return Int32(-1)
    end
end

"""
    use_allreduce!(f, trainer, rank, world_size) -> trainer

Data-parallel training over the host's own communicator (MPI.jl, NCCL, Gloo, sockets, ...): this
process is `rank` of `world_size`, and `f` sums a buffer over the ranks, in place:

    f(buffer::Ptr{Cvoid}, count::Int, dtype::DLDataType, device::DLDevice)

`buffer` holds `count` floats of `dtype.bits` bits (`dtype.code == ADPO.kDLFloat`) on `device`
(`device.device_type == ADPO.kDLCPU`, or `ADPO.kDLCUDA` after adpo synchronised its stream).
For a CPU buffer, `unsafe_wrap(Array, Ptr{Float64}(buffer), count)` (`Ptr{Float32}` when
`dtype.bits == 32`) views it as an array, valid only during the call. `f` succeeds when it
returns without throwing and does not return a non-zero integer (a non-zero integer is an error
code); a failure makes the trainer call throw `ADPO_STATUS_COMMUNICATION`, with the exception `f`
threw in the message.

`f` may be any Julia function or closure (`do` block syntax works): adpo calls a C-callable
trampoline made by `@cfunction`, which finds `f` through the userdata pointer and calls it,
synchronously, on the thread that called the trainer (from `use_allreduce!` itself, `step!`,
`save_checkpoint` and `load_checkpoint!`): for each gradient bucket, the small metric and
status reductions, and the copy of rank 0's state. `f` must not yield to other tasks that use
this trainer.

Collective, like [`use_mpi!`](@ref): every rank calls it, and rank 0's state is copied to every
rank (through `f`) before it returns. The trainer keeps `f` until it is closed or another
communicator replaces it. Throws `ADPO_STATUS_INVALID_ARGUMENT` unless `0 <= rank < world_size`
(a previous communicator then stays in place).

```julia
use_allreduce!(trainer, MPI.Comm_rank(comm), MPI.Comm_size(comm)) do buf, n, dtype, device
    T = dtype.bits == 64 ? Float64 : Float32
    MPI.Allreduce!(unsafe_wrap(Array, Ptr{T}(buf), n), +, comm)
    return 0
end
```
"""
function use_allreduce!(f, tr::Trainer, rank::Integer, world_size::Integer)
    _fits_int32(rank, world_size) ||
        throw(ArgumentError("rank $rank and world_size $world_size must fit in Int32"))
    a = _Allreduce(f, nothing)
    trampoline = @cfunction(_allreduce_trampoline, Int32,
                            (Ptr{Cvoid}, Ptr{Cvoid}, Csize_t, DLDataType, DLDevice))
    # `a` needs no free function: the Trainer roots it (and adpo never calls it once replaced).
    GC.@preserve a begin
        _use_allreduce!(tr, rank, world_size, trampoline, pointer_from_objref(a), C_NULL, a)
    end
    return tr
end

"""
    use_allreduce!(trainer, rank, world_size, allreduce, userdata = C_NULL, free_userdata = C_NULL)

The C-level form of [`use_allreduce!`](@ref): `allreduce` must be a C-callable function pointer
with the signature of `adpo_allreduce_fn`, made with `@cfunction`:

    int32_t allreduce(void *userdata, void *buffer, size_t count, DLDataType dtype, DLDevice device)

that is `@cfunction(my_allreduce, Int32, (Ptr{Cvoid}, Ptr{Cvoid}, Csize_t, DLDataType, DLDevice))`
(a `Ptr{Cvoid}`, or the `Base.CFunction` of `@cfunction(\$closure, ...)`, which the trainer keeps
alive), returning 0 when the sum is in `buffer`; it must not throw. adpo passes `userdata` back
on every call and owns it from this call on, whatever the outcome: `free_userdata` (a
C-callable `void (*)(void *)`, or `C_NULL`) is called on it exactly once, when the trainer is
freed or another communicator replaces this one, or before an error is thrown (here too, when
`rank` or `world_size` does not fit in `Int32`).
"""
function use_allreduce!(tr::Trainer, rank::Integer, world_size::Integer,
                        allreduce::Union{Ptr{Cvoid},Base.CFunction},
                        userdata::Ptr{Cvoid}=C_NULL,
                        free_userdata::Union{Ptr{Cvoid},Base.CFunction}=C_NULL)
    if !_fits_int32(rank, world_size)
        # the userdata is ours to free, as adpo would
        GC.@preserve free_userdata begin
            fp = Base.unsafe_convert(Ptr{Cvoid}, free_userdata)
            fp == C_NULL || ccall(fp, Cvoid, (Ptr{Cvoid},), userdata)
        end
        throw(ArgumentError("rank $rank and world_size $world_size must fit in Int32"))
    end
    _use_allreduce!(tr, rank, world_size, allreduce, userdata, free_userdata,
                    (allreduce, free_userdata))
    return tr
end

_fits_int32(xs::Integer...) = all(x -> typemin(Int32) <= x <= typemax(Int32), xs)

# One adpo_trainer_use_allreduce call (rank and world_size fit in Int32); `keep` is what the
# trainer roots on success.
function _use_allreduce!(tr::Trainer, rank::Integer, world_size::Integer, allreduce, userdata::Ptr{Cvoid},
                         free_userdata, keep)
    err = _err()
    st = adpo_trainer_use_allreduce(tr, rank, world_size, allreduce, userdata, free_userdata, err)
    _check(st, err, :adpo_trainer_use_allreduce, keep)
    tr.allreduce = keep
    return nothing
end

include("tokenizer.jl")
include("rollout.jl")

end # module ADPO
