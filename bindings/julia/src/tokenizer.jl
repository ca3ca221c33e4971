# Tokenizers and chat templates (adpo_tokenizer_* of include/adpo.h). Included by ADPO.jl.

"""
    Tokenizer(path)

A Hugging Face tokenizer: `path` is a tokenizer.json or a checkpoint directory holding one
(tokenizer_config.json beside it gives the chat templates and special tokens,
generation_config.json or config.json the EOS ids). Read-only once loaded: one tokenizer may be
used from many tasks at once. Free with `close` (or leave it to the finalizer).
"""
mutable struct Tokenizer <: Handle
    ptr::Ptr{Cvoid}
    function Tokenizer(::_Own, p::Ptr{Cvoid})
        p == C_NULL && error("adpo returned a NULL tokenizer handle")
        return finalizer(_free!, new(p))
    end
end

function Tokenizer(path::AbstractString)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    err = _err()
    st = adpo_tokenizer_load(String(path), out, err)
    _check(st, err, :adpo_tokenizer_load)
    return Tokenizer(_Own(), out[])
end

function _free!(t::Tokenizer)
    p = t.ptr
    if p != C_NULL
        t.ptr = C_NULL
        adpo_tokenizer_free(p)
    end
    return nothing
end

# One adpo_tokenizer_encode call; `buf` may be C_NULL with cap 0 (the size query).
function _encode_call(t::Tokenizer, s::String, special::Bool, buf, cap::Integer, n::Base.RefValue{Csize_t})
    err = _err()
    st = adpo_tokenizer_encode(t, s, special, buf, cap, n, err)
    _check(st, err, :adpo_tokenizer_encode)
    return nothing
end

"""
    encode(tok, text; add_special_tokens = true) -> Vector{Int64}

Token ids of UTF-8 `text`. `add_special_tokens` adds what the tokenizer's post-processor adds
(e.g. BOS); pass false for text rendered by [`apply_chat_template`](@ref).
"""
function encode(t::Tokenizer, text::AbstractString; add_special_tokens::Bool=true)
    s = _nul_free(text, "text")
    n = Ref{Csize_t}(0)
    _encode_call(t, s, add_special_tokens, C_NULL, 0, n)   # sizes first
    ids = Vector{Int64}(undef, n[])
    isempty(ids) || _encode_call(t, s, add_special_tokens, ids, length(ids), n)
    return ids
end

# One adpo_tokenizer_encode_batch call over the texts' C pointers.
function _encode_batch_call(t::Tokenizer, ptrs::Vector{Ptr{UInt8}}, special::Bool, buf, cap::Integer,
                            offsets::Vector{Csize_t}, total::Base.RefValue{Csize_t})
    err = _err()
    st = adpo_tokenizer_encode_batch(t, ptrs, length(ptrs), special, buf, cap, offsets, total, err)
    _check(st, err, :adpo_tokenizer_encode_batch)
    return nothing
end

"""
    encode_batch(tok, texts; add_special_tokens = true) -> Vector{Vector{Int64}}

[`encode`](@ref) of each text (in parallel inside adpo).
"""
function encode_batch(t::Tokenizer, texts::AbstractVector{<:AbstractString}; add_special_tokens::Bool=true)
    strs = [_nul_free(s, "texts[$i]") for (i, s) in enumerate(texts)]
    offsets = Vector{Csize_t}(undef, length(strs) + 1)
    total = Ref{Csize_t}(0)
    flat = GC.@preserve strs begin
        ptrs = Ptr{UInt8}[pointer(s) for s in strs]   # a String's bytes end with a NUL
        _encode_batch_call(t, ptrs, add_special_tokens, C_NULL, 0, offsets, total)
        buf = Vector{Int64}(undef, total[])
        isempty(buf) || _encode_batch_call(t, ptrs, add_special_tokens, buf, length(buf), offsets, total)
        buf
    end
    return [flat[offsets[i]+1:offsets[i+1]] for i in 1:length(strs)]
end

"""
    decode(tok, ids; skip_special_tokens = false) -> String

The text of `ids`. An id outside the vocabulary throws `ADPO_STATUS_INVALID_ARGUMENT`.
"""
function decode(t::Tokenizer, ids::AbstractVector{<:Integer}; skip_special_tokens::Bool=false)
    v = _i64(ids, "ids")
    out = Ref{Ptr{UInt8}}(C_NULL)
    err = _err()
    st = adpo_tokenizer_decode(t, v, length(v), skip_special_tokens, out, err)
    _check(st, err, :adpo_tokenizer_decode)
    return _take_string(out)
end

"""
    decode_batch(tok, seqs; skip_special_tokens = false) -> Vector{String}

[`decode`](@ref) of each id vector.
"""
function decode_batch(t::Tokenizer, seqs::AbstractVector{<:AbstractVector{<:Integer}};
                      skip_special_tokens::Bool=false)
    n = length(seqs)
    n == 0 && return String[]
    flat = Int64[]
    offsets = Csize_t[0]
    for s in seqs
        append!(flat, s)
        push!(offsets, length(flat))
    end
    out = fill(Ptr{UInt8}(C_NULL), n)
    err = _err()
    st = adpo_tokenizer_decode_batch(t, flat, offsets, n, skip_special_tokens, out, err)
    _check(st, err, :adpo_tokenizer_decode_batch)
    return [_take_string(Ref(p)) for p in out]
end

# The options JSON: a string as given; otherwise the keyword's add_generation_prompt unless the
# options set it.
_chat_options(o::AbstractString, agp::Bool) = o
_chat_options(o::NamedTuple, agp::Bool) = merge((add_generation_prompt = agp,), o)
_chat_options(o::AbstractDict, agp::Bool) =
    merge(Dict{String,Any}("add_generation_prompt" => agp), Dict{String,Any}(string(k) => v for (k, v) in o))

_messages_json(m::AbstractString) = _nul_free(m, "messages")
_messages_json(m) = _nul_free(to_json(m), "messages")

"""
    apply_chat_template(tok, messages; add_generation_prompt = false, options = nothing) -> String

Renders the tokenizer's chat template as transformers' `apply_chat_template(tokenize=False)`
does. `messages`: a JSON string, or a vector of NamedTuples / Dicts with `role` and `content`
(`[(role = "user", content = "Hi")]`). `options`: `nothing`, a JSON string or a NamedTuple /
Dict with keys `template` (a template's name or source), `tools`, `documents`, `variables`
(e.g. `(enable_thinking = false,)`) and `add_generation_prompt` (then the keyword is ignored).
Template errors, including the template's own `raise_exception`, throw
`ADPO_STATUS_INVALID_ARGUMENT` with the template's message.
"""
function apply_chat_template(t::Tokenizer, messages; add_generation_prompt::Bool=false, options=nothing)
    m = _messages_json(messages)
    out = Ref{Ptr{UInt8}}(C_NULL)
    err = _err()
    if options === nothing
        st = adpo_tokenizer_apply_chat_template(t, m, add_generation_prompt, out, err)
        _check(st, err, :adpo_tokenizer_apply_chat_template)
    else
        opts = _chat_options(options, add_generation_prompt)
        st = adpo_tokenizer_apply_chat_template_options(t, m, _json_arg(opts), out, err)
        _check(st, err, :adpo_tokenizer_apply_chat_template_options)
    end
    return _take_string(out)
end

function _eos_call(t::Tokenizer, buf, cap::Integer, n::Base.RefValue{Csize_t})
    err = _err()
    st = adpo_tokenizer_eos_ids(t, buf, cap, n, err)
    _check(st, err, :adpo_tokenizer_eos_ids)
    return nothing
end

"""
    eos_ids(tok) -> Vector{Int64}

The ids that end generation (generation_config.json's eos_token_id, else config.json's, else the
EOS token's id).
"""
function eos_ids(t::Tokenizer)
    n = Ref{Csize_t}(0)
    _eos_call(t, C_NULL, 0, n)
    ids = Vector{Int64}(undef, n[])
    isempty(ids) || _eos_call(t, ids, length(ids), n)
    return ids
end

"Number of tokens, added tokens included (Python's `len(tokenizer)`)."
function vocab_size(t::Tokenizer)
    out = Ref{Int64}(0)
    err = _err()
    st = adpo_tokenizer_vocab_size(t, out, err)
    _check(st, err, :adpo_tokenizer_vocab_size)
    return Int(out[])
end

"""
    token_to_id(tok, token) -> Int64

The id of a token string such as `"<|im_end|>"`; throws `ADPO_STATUS_INVALID_ARGUMENT` when it
is not one token of the vocabulary.
"""
function token_to_id(t::Tokenizer, token::AbstractString)
    out = Ref{Int64}(0)
    err = _err()
    st = adpo_tokenizer_token_to_id(t, String(token), out, err)
    _check(st, err, :adpo_tokenizer_token_to_id)
    return out[]
end

"""
    special_token(tok, name) -> Union{String,Nothing}

A named special token of tokenizer_config.json (`"bos_token"`, `"eos_token"`, `"unk_token"`,
`"sep_token"`, `"pad_token"`, `"cls_token"`, `"mask_token"`), or `nothing` when it is not set.
"""
function special_token(t::Tokenizer, name::AbstractString)
    out = Ref{Ptr{UInt8}}(C_NULL)
    err = _err()
    st = adpo_tokenizer_special_token(t, String(name), out, err)
    _check(st, err, :adpo_tokenizer_special_token)
    return out[] == C_NULL ? nothing : _take_string(out)
end
