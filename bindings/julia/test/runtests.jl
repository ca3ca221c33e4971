# Tests of the ADPO Julia binding. Run from the repository root with bindings/julia/run-tests,
# or: ADPO_LIB=$PWD/target/release/libadpo.so ADPO_FIXTURES=$PWD/tests/fixtures/generated \
#       julia --project=bindings/julia -e 'using Pkg; Pkg.test()'
using ADPO
using Test

# Catches the exception `f()` throws (nothing if it returns).
function thrown(f)
    try
        f()
    catch e
        return e
    end
    return nothing
end

# Objective spec vector V1 (the same numbers as the C and Python tests).
const LOGP = [-12.0, -15.5, -9.8, -20.1]
const ANCHOR = [-12.5, -15.0, -10.4, -19.6]
const REWARDS = [1.0, 0.0, 0.5, -0.1]
const GROUPS = [0, 0, 0, 0]

# C-callable all-reduce and free functions for the C-level form of use_allreduce! (made into
# function pointers with @cfunction): a world of one rank leaves the buffer as it is.
const RAW_USERDATA = Ptr{Cvoid}(UInt(0x1234))
const RAW_CALLS = Ref(0)
const RAW_FREES = Ref(0)
function raw_identity_allreduce(userdata::Ptr{Cvoid}, buffer::Ptr{Cvoid}, count::Csize_t,
                                dtype::ADPO.DLDataType, device::ADPO.DLDevice)::Int32
    RAW_CALLS[] += 1
    ok = userdata == RAW_USERDATA && buffer != C_NULL && count > 0 && device.device_type == ADPO.kDLCPU
    return ok ? Int32(0) : Int32(1)
end
function raw_free(userdata::Ptr{Cvoid})::Cvoid
    userdata == RAW_USERDATA && (RAW_FREES[] += 1)
    return nothing
end

@testset "ADPO.jl" begin
    @testset "library" begin
        @test ADPO.abi_version() == ADPO.ADPO_ABI_VERSION == 1
        @test startswith(ADPO.version(), "adpo ")
        @test ADPO.cuda_device_count() >= 0
        @test isfile(ADPO.library_path()) || !occursin('/', ADPO.library_path())
        # the mirrored structs have the C sizes (uint32 + padding, then 8-byte fields)
        @test sizeof(ObjectiveMetrics) == 88
        @test sizeof(TrainerMetrics) == 144
        @test fieldoffset(TrainerMetrics, fieldcount(TrainerMetrics)) == 136   # reduce_time_ms, last
        @test sizeof(ADPO.DLDataType) == 4 && sizeof(ADPO.DLDevice) == 8
        @test has_mpi() isa Bool
        @test fieldoffset(ObjectiveMetrics, 2) == 8
        @test fieldoffset(TrainerMetrics, 2) == 8
    end

    @testset "objective spec vector V1" begin
        obj = Objective()
        r = evaluate(obj, LOGP, ANCHOR, GROUPS; rewards=REWARDS)
        @test r.loss ≈ 1.0152 atol=1e-4
        @test r.loss ≈ 1.0152001267047113 rtol=1e-12
        @test r.grad ≈ [-0.60527751, 0.11172775, 0.37510032, 0.11844944] atol=1e-7
        @test r.scores ≈ [0.625, -0.625, 0.75, -0.625] atol=1e-12
        @test sum(r.grad) ≈ 0 atol=1e-10

        m = metrics(obj)
        @test m isa ObjectiveMetrics
        @test m.struct_size == sizeof(ObjectiveMetrics)
        @test m.loss == r.loss
        @test m.groups == 1
        @test m.tau ≈ 0.8
        @test isnan(m.clip_fraction)
        js = metrics_json(obj)
        @test occursin("\"loss\"", js)
        @test occursin("\"clip_fraction\":null", replace(js, " " => ""))

        # outputs can be skipped
        r2 = evaluate(obj, LOGP, ANCHOR, GROUPS; rewards=REWARDS, grad=false, scores=false)
        @test r2.loss == r.loss
        @test r2.grad === nothing && r2.scores === nothing

        # any Real / Integer vectors are accepted
        r3 = evaluate(obj, Float32.(LOGP), ANCHOR, Int32.(GROUPS); rewards=[1, 0, 0.5, -0.1])
        @test r3.loss ≈ r.loss rtol=1e-5

        # policy_entropy goes through adpo_objective_eval_entropy (fixed tau: same loss)
        r4 = evaluate(obj, LOGP, ANCHOR, GROUPS; rewards=REWARDS, policy_entropy=[0.5, 0.4, 0.3, 0.2])
        @test r4.loss ≈ r.loss rtol=1e-12

        # explicit targets
        r5 = evaluate(obj, LOGP, ANCHOR, GROUPS; targets=[0.4, 0.1, 0.3, 0.2])
        @test r5.loss ≈ 1.3330299340989071 rtol=1e-10

        close(obj)
        @test !isopen(obj)
        close(obj)  # idempotent
        @test thrown(() -> evaluate(obj, LOGP, ANCHOR, GROUPS; rewards=REWARDS)) isa ArgumentError
    end

    @testset "config: raw reward transform" begin
        raw = evaluate(Objective("{\"reward_transform\":\"raw\"}"), LOGP, ANCHOR, GROUPS; rewards=REWARDS)
        @test raw.loss ≈ 1.15766 atol=1e-5
        @test raw.loss ≈ 1.1576645204908975 rtol=1e-12
        # the same config from a NamedTuple and a Dict
        @test evaluate(Objective((reward_transform = "raw",)), LOGP, ANCHOR, GROUPS; rewards=REWARDS).loss == raw.loss
        @test evaluate(Objective(Dict("reward_transform" => "raw")), LOGP, ANCHOR, GROUPS; rewards=REWARDS).loss == raw.loss
        @test ADPO.to_json((a = 1, b = (0.5, true), c = nothing, d = "q\"\\\n")) ==
              "{\"a\":1,\"b\":[0.5,true],\"c\":null,\"d\":\"q\\\"\\\\\\u000a\"}"
    end

    @testset "grpo tokens" begin
        obj = Objective((loss = "grpo",))
        L = [-1.0 -2.0 -0.5; -0.7 -1.2 -3.0; -2.2 -0.1 -0.9; -1.5 -1.5 -1.5]
        old = L .+ [0.1 -0.1 0.05; 0 0.2 -0.1; 0.05 0.05 0.05; -0.2 0.1 0]
        mask = [0 1 1; 0 1 1; 0 1 0; 0 1 1]
        r = evaluate_tokens(obj, L, old, mask, REWARDS, GROUPS)
        @test r.loss ≈ 0.01443386690006529 rtol=1e-9
        @test size(r.grad) == (4, 3)
        @test r.grad[1, 2] ≈ -0.20252298 atol=1e-7
        @test r.grad[2, 3] ≈ 0.10905084 atol=1e-7
        @test r.grad[3, 3] == 0
        @test r.advantages ≈ [1.28275261, -0.69071294, 0.29601983, -0.8880595] atol=1e-7
    end

    @testset "errors" begin
        # NaN reward -> ADPO_STATUS_NON_FINITE
        e = thrown(() -> evaluate(Objective(), LOGP, ANCHOR, GROUPS; rewards=[1.0, NaN, 0.5, -0.1]))
        @test e isa ADPOError
        @test e.status == 5 == ADPO.ADPO_STATUS_NON_FINITE
        @test e.func === :adpo_objective_eval
        @test occursin("rewards", e.message)
        @test occursin("ADPO_STATUS_NON_FINITE", sprint(showerror, e))

        e = thrown(() -> Objective("{\"bogus\":1}"))
        @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_CONFIG
        @test occursin("bogus", e.message)

        # neither rewards nor targets
        e = thrown(() -> evaluate(Objective(), LOGP, ANCHOR, GROUPS))
        @test e isa ADPOError
        # lengths are checked before calling into C
        @test thrown(() -> evaluate(Objective(), LOGP, ANCHOR[1:3], GROUPS; rewards=REWARDS)) isa DimensionMismatch

        # DLPack entry point: NULL tensors are rejected with a status, nothing is consumed
        e = thrown(() -> evaluate_dlpack(Objective(), C_NULL, C_NULL, C_NULL))
        @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_NULL_ARGUMENT
        @test dlpack_release(C_NULL) === nothing

        # a panic inside adpo comes back as an error, never an unwind
        e = thrown(ADPO.test_panic)
        @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_PANIC

        e = thrown(() -> Model(joinpath(tempdir(), "adpo-no-such-model.pt")))
        @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_MODEL
    end

    @testset "batch" begin
        ids = [1 2 3 4; 1 2 5 6; 7 8 9 10]
        lm = Bool[0 0 1 1; 0 0 1 1; 0 1 1 1]
        b = Batch(ids, lm, [3, 3, 9]; rewards=[1.0, 0.0, 0.5])
        @test size(b) == (3, 4)
        @test size(b, 2) == 4
        @test token_ids(b) == ids
        @test loss_mask(b) == lm
        @test group_ids(b) == [3, 3, 9]
        set_targets!(b, [0.25, 0.75, 1.0])
        set_old_logp!(b, [-1.0, -2.0, -3.0])
        set_anchor_logp!(b, fill(-0.5, 3, 4))
        @test thrown(() -> set_rewards!(b, [1.0])) isa DimensionMismatch
        e = thrown(() -> set_rewards!(b, [1.0, Inf, 0.0]))
        @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_NON_FINITE
        close(b)
        @test !isopen(b)
    end

    @testset "rollout records, concat, overlong penalty" begin
        a = Batch([1 2 3; 1 2 4], Bool[0 1 1; 0 1 1], [5, 5])
        e = thrown(() -> rollout_logp(a))
        @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_ARGUMENT
        set_rollout_logp!(a, [9.0 -1.0 -2.0; 9.0 -3.0 -4.0])
        @test rollout_logp(a) == [0.0 -1.0 -2.0; 0.0 -3.0 -4.0]
        set_truncated!(a, [false, true])
        @test truncated(a) == [false, true]
        set_policy_version!(a, 7)
        @test policy_version(a) == 7
        b = Batch([1 2 3 4; 1 2 5 6], Bool[0 0 1 1; 0 0 1 1], [5, 5])
        set_rollout_logp!(b, fill(-0.5, 2, 4))
        set_truncated!(b, [true, true])
        set_policy_version!(b, 4)
        c = concat(a, b)
        @test size(c) == (4, 4)
        @test group_ids(c) == [0, 0, 1, 1]
        @test truncated(c) == [false, true, true, true]
        @test policy_version(c) == 4
        @test thrown(() -> concat(a, Batch([1 2], Bool[0 1], [0]))) isa ADPOError
        @test soft_overlong_penalty(18, 20, 4, 1.0) == -0.5
        @test thrown(() -> soft_overlong_penalty(3, 20, 0, 1.0)) isa ADPOError
    end

    fixtures = get(ENV, "ADPO_FIXTURES", "")
    model_path = joinpath(fixtures, "tiny", "llama")
    if !isempty(fixtures) && isdir(model_path)
        @testset "a step in two calls: the host's gradient accumulates" begin
            function run(calls, scale)
                policy = Model(model_path)
                tr = Trainer(policy, nothing, (optimizer = (name = "sgd", lr = 0.05),))
                b = ADPO.sample(tr, [[1, 2], [1, 5, 7]], 3; sampling=(max_new_tokens = 3, seed = 4))
                lp = token_logp(tr, b)
                g = scale .* (lp .+ 0.1)  # any function of the log-probs
                for _ in 1:calls
                    @test isnan(forward_backward!(tr, b, g).loss)
                end
                @test optim_step!(tr).step == 1
                @test thrown(() -> optim_step!(tr)) isa ADPOError
                return ADPO.params(policy)
            end
            @test isapprox(run(2, 1.0), run(1, 2.0); rtol=1e-6)
        end

        @testset "trainer: step, sampling, checkpoint" begin
            policy = Model(model_path)
            @test vocab_size(policy) == 16
            tr = Trainer(policy, nothing, (optimizer = (name = "sgd", lr = 0.5), seed = 3))
            close(policy)  # the trainer keeps its own reference

            prompts = [[1, 2, 3], [4, 5]]
            b = ADPO.sample(tr, prompts, 4; sampling=(max_new_tokens = 4, seed = 7))
            n, t = size(b)
            @test n == 8
            @test t == 3 + 4
            ids = token_ids(b)
            @test size(ids) == (n, t)
            @test all(0 .<= ids .< 16)
            @test ids[1:4, 1:3] == repeat([1 2 3], 4)
            @test ids[5:8, 1:2] == repeat([4 5], 4)
            @test group_ids(b) == [0, 0, 0, 0, 1, 1, 1, 1]
            lm = loss_mask(b)
            @test !any(lm[:, 1])
            @test all(lm[1:4, 4]) && all(lm[5:8, 3])
            old = old_logp(b)
            @test size(old) == (n, t)
            @test all(old[.!lm] .== 0) && all(old[lm] .< 0)
            # seeded sampling is deterministic
            @test token_ids(ADPO.sample(tr, prompts, 4; sampling="{\"max_new_tokens\":4,\"seed\":7}")) == ids

            set_rewards!(b, [1.0, 0.0, 0.5, -0.5, 0.2, 0.9, -1.0, 0.3])
            lp0 = sequence_logp(tr, b)
            @test length(lp0) == n && all(isfinite, lp0)

            # on-policy first step on a freshly sampled batch: s = 0, loss = log K
            m = step!(tr, b)
            @test m isa TrainerMetrics
            @test m.struct_size == sizeof(TrainerMetrics)
            @test m.step == 1
            @test m.loss ≈ log(4) rtol=1e-6
            @test m.groups == 2
            @test m.lr ≈ 0.5
            @test isfinite(m.grad_norm) && m.grad_norm > 0
            @test occursin("\"step\":1", replace(metrics_json(tr), " " => ""))
            lp1 = sequence_logp(tr, b)
            @test lp1 != lp0

            mktempdir() do dir
                ck = joinpath(dir, "ckpt.safetensors")
                save_checkpoint(tr, ck)
                @test isfile(ck)
                @test readdir(dir) == ["ckpt.safetensors"]  # one file: weights and state
                @test step!(tr, b; metrics=false) === nothing
                @test sequence_logp(tr, b) != lp1
                load_checkpoint!(tr, ck)
                @test sequence_logp(tr, b) == lp1
                e = thrown(() -> load_checkpoint!(tr, joinpath(dir, "missing.safetensors")))
                @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_CHECKPOINT
                @test sequence_logp(tr, b) == lp1  # a failed load leaves the trainer as it was
            end

            # a batch built by hand works with the same trainer
            hb = Batch(ids, lm, group_ids(b); rewards=collect(range(-1, 1; length=n)))
            @test step!(tr, hb).step == 2  # the checkpoint restored step 1
            close(hb)
            close(b)
            close(tr)
            @test !isopen(tr)
        end

        @testset "data parallel: world, parameters, all-reduce callbacks" begin
            cfg = (loss = "listwise", tau = 0.8, beta_reward = 0.5, epochs_per_batch = 2,
                   optimizer = (name = "adamw", lr = 0.01), grad_clip = 1.0, seed = 3)
            ids = [1 2 3 4 5; 1 2 6 7 8; 1 2 9 10 11; 1 2 12 13 14;
                   1 3 4 5 6; 1 3 7 8 9; 1 3 10 11 12; 1 3 13 14 15]
            lm = repeat(Bool[0 0 1 1 1], 8, 1)
            b = Batch(ids, lm, [0, 0, 0, 0, 1, 1, 1, 1]; rewards=[1.0, 0.0, 0.5, 0.2, 0.1, 0.9, 0.3, 0.6])

            # parameters
            fresh = Model(model_path)
            n = num_params(fresh)
            @test n > 0
            w0 = ADPO.params(fresh)
            @test w0 isa Vector{Float64}
            @test length(w0) == n
            @test any(!iszero, w0)

            alone_policy = Model(model_path)
            alone = Trainer(alone_policy, nothing, cfg)
            @test world(alone) == (rank = 0, size = 1)

            # a world of one rank whose all-reduce leaves the buffer as it is trains exactly
            # as a trainer alone
            dp_policy = Model(model_path)
            dp = Trainer(dp_policy, nothing, cfg)
            calls = Ref(0)
            bad = Ref(0)
            r = use_allreduce!(dp, 0, 1) do buf, count, dtype, device
                calls[] += 1
                ok = buf != C_NULL && count > 0 && dtype.code == ADPO.kDLFloat &&
                     dtype.bits in (32, 64) && device.device_type == ADPO.kDLCPU
                if ok   # a view of the buffer: the sum over one rank is the buffer itself
                    T = dtype.bits == 64 ? Float64 : Float32
                    length(unsafe_wrap(Array, Ptr{T}(buf), count)) == count || (ok = false)
                end
                ok || (bad[] += 1)
                return ok ? 0 : 1
            end
            @test r === dp
            joined = calls[]
            @test joined >= 1   # rank 0's state is copied through the all-reduce
            @test world(dp) == (rank = 0, size = 1)
            for _ in 1:3
                ma = step!(alone, b)
                md = step!(dp, b)
                @test md.step == ma.step
                @test md.loss == ma.loss
                @test md.grad_norm == ma.grad_norm
                @test ma.reduce_time_ms == 0
                @test 0 <= md.reduce_time_ms <= md.step_time_ms
            end
            @test calls[] > joined
            @test bad[] == 0
            trained = ADPO.params(dp_policy)
            @test length(trained) == n
            @test trained == ADPO.params(alone_policy)   # bit-identical
            @test trained != w0                          # and a step changes the weights

            # a refused rank: ADPO_STATUS_INVALID_ARGUMENT, the function is never called
            before = calls[]
            e = thrown(() -> use_allreduce!((buf, count, dtype, device) -> (calls[] += 1; 0), dp, 2, 2))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_ARGUMENT
            @test thrown(() -> use_allreduce!((buf, count, dtype, device) -> 0, dp, 0, 0)) isa ADPOError
            @test thrown(() -> use_allreduce!((buf, count, dtype, device) -> 0, dp, 0, 2^40)) isa ArgumentError
            @test calls[] == before

            # failures of the function: ADPO_STATUS_COMMUNICATION, with what it threw
            tr_policy = Model(model_path)
            tr = Trainer(tr_policy, nothing, cfg)
            e = thrown(() -> use_allreduce!((buf, count, dtype, device) -> error("link down"), tr, 0, 1))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_COMMUNICATION
            @test occursin("link down", e.message)
            e = thrown(() -> use_allreduce!((buf, count, dtype, device) -> 7, tr, 0, 1))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_COMMUNICATION
            @test occursin("7", e.message)
            @test world(tr) == (rank = 0, size = 1)   # a failed join leaves the trainer alone
            @test step!(tr, b).step == 2
            failing = Ref(false)
            use_allreduce!(tr, 0, 1) do buf, count, dtype, device
                failing[] && error("peer lost")
                return nothing
            end
            w_before = ADPO.params(tr_policy)
            failing[] = true
            e = thrown(() -> step!(tr, b))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_COMMUNICATION
            @test occursin("peer lost", e.message)
            @test ADPO.params(tr_policy) == w_before   # a failed step changes no weights
            close(tr)

            # the C-level form: a @cfunction pointer, userdata and its free function, which adpo
            # calls exactly once (when the trainer is freed, or before an error is thrown)
            RAW_CALLS[] = 0
            RAW_FREES[] = 0
            allreduce_c = @cfunction(raw_identity_allreduce, Int32,
                                     (Ptr{Cvoid}, Ptr{Cvoid}, Csize_t, ADPO.DLDataType, ADPO.DLDevice))
            free_c = @cfunction(raw_free, Cvoid, (Ptr{Cvoid},))
            raw_policy = Model(model_path)
            raw = Trainer(raw_policy, nothing, cfg)
            use_allreduce!(raw, 0, 1, allreduce_c, RAW_USERDATA, free_c)
            @test RAW_CALLS[] >= 1
            @test RAW_FREES[] == 0
            for _ in 1:3
                step!(raw, b)
            end
            @test ADPO.params(raw_policy) == trained   # the same three steps as alone and dp
            @test RAW_FREES[] == 0
            close(raw)
            @test RAW_FREES[] == 1
            close(raw)   # idempotent: not freed twice
            @test RAW_FREES[] == 1
            e = thrown(() -> use_allreduce!(Trainer(Model(model_path), nothing, cfg), 3, 2,
                                            allreduce_c, RAW_USERDATA, free_c))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_ARGUMENT
            @test RAW_FREES[] == 2   # freed before the error
            @test thrown(() -> use_allreduce!(alone, 0, 2^40, allreduce_c, RAW_USERDATA, free_c)) isa ArgumentError
            @test RAW_FREES[] == 3

            # MPI: joining would initialise MPI in this process (its signal handlers and Julia's
            # do not mix); `make test-mpi` tests that path with mpirun
            if !has_mpi()
                e = thrown(() -> use_mpi!(alone))
                @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_UNSUPPORTED
            end

            close(dp)
            close(alone)
            close(b)
        end
    else
        @warn "ADPO_FIXTURES/tiny/llama not found: trainer tests skipped" fixtures
        @test_skip false
    end

    tokdir = joinpath(get(ENV, "ADPO_FIXTURES", ""), "tokenizers")
    if isfile(joinpath(tokdir, "qwen", "tokenizer.json"))
        @testset "tokenizer and chat templates" begin
            # Values fixed by tests/fixtures/make_tokenizers.py: special tokens first in each
            # vocabulary (qwen: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2; llama3:
            # <|begin_of_text|> 0), vocabulary 700, and the templates' text.
            qwen = Tokenizer(joinpath(tokdir, "qwen"))
            llama = Tokenizer(joinpath(tokdir, "llama3", "tokenizer.json"))
            mistral = Tokenizer(joinpath(tokdir, "mistral"))
            text = "Hello world! Café 東京 🚀 <|im_end|>"
            ids = encode(qwen, text; add_special_tokens=false)
            @test ids[end] == 2
            @test decode(qwen, ids) == text
            @test decode(qwen, ids; skip_special_tokens=true) == "Hello world! Café 東京 🚀 "
            @test encode(llama, "Hello") == [0; encode(llama, "Hello"; add_special_tokens=false)]
            @test encode(qwen, "") == Int64[]
            texts = ["Hello", "", "東京は日本の首都です。"]
            seqs = encode_batch(llama, texts)
            @test seqs == [encode(llama, t) for t in texts]
            @test decode_batch(llama, seqs; skip_special_tokens=true) == texts
            @test decode_batch(llama, Vector{Int64}[]) == String[]
            @test vocab_size(qwen) == 700
            @test eos_ids(qwen) == [2, 0]
            @test eos_ids(mistral) == [2]
            @test token_to_id(qwen, "<|im_start|>") == 1
            @test special_token(qwen, "eos_token") == "<|im_end|>"
            @test special_token(qwen, "bos_token") === nothing
            @test special_token(mistral, "bos_token") == "<s>"

            user = [(role = "user", content = "What is 2 + 2?")]
            sys_user = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" *
                       "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
            @test apply_chat_template(qwen, user) == sys_user
            @test apply_chat_template(qwen, user; add_generation_prompt=true) == sys_user * "<|im_start|>assistant\n"
            @test apply_chat_template(qwen, user; add_generation_prompt=true,
                                      options=(variables = (enable_thinking = false,),)) ==
                  sys_user * "<|im_start|>assistant\n<think>\n\n</think>\n\n"
            @test apply_chat_template(qwen, "[{\"role\": \"user\", \"content\": \"hi\"}]";
                                      options="{\"template\": \"{{ messages[0].content.upper() }}\"}") == "HI"
            @test apply_chat_template(mistral, [(role = "system", content = "Be brief."), (role = "user", content = "Hi")]) ==
                  "<s> [INST] Be brief.\n\nHi [/INST]"

            # errors
            e = thrown(() -> apply_chat_template(mistral, [(role = "user", content = "a"), (role = "user", content = "b")]))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_ARGUMENT
            @test e.func === :adpo_tokenizer_apply_chat_template
            @test occursin("conversation roles must alternate", e.message)
            e = thrown(() -> apply_chat_template(qwen, "[{\"content\": \"hi\"}]"))
            @test e isa ADPOError && occursin("has no \"role\"", e.message)
            e = thrown(() -> apply_chat_template(qwen, user; options=(tempalte = "x",)))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_CONFIG
            e = thrown(() -> decode(qwen, [1, 700]))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_ARGUMENT
            @test occursin("ids[1] = 700", e.message)
            e = thrown(() -> encode(qwen, "caf\xe9"))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_ARGUMENT
            @test thrown(() -> encode(qwen, "a\0b")) isa ArgumentError
            e = thrown(() -> token_to_id(qwen, "<|nope|>"))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_ARGUMENT
            e = thrown(() -> Tokenizer(joinpath(tokdir, "no-such-tokenizer")))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_IO

            close(qwen)
            @test !isopen(qwen)
            @test thrown(() -> encode(qwen, "x")) isa ArgumentError
            close(llama)
            close(mistral)
        end
    else
        @warn "ADPO_FIXTURES/tokenizers not found: tokenizer tests skipped" tokdir
        @test_skip false
    end

    colours = joinpath(get(ENV, "ADPO_FIXTURES", ""), "colours")
    if isdir(colours)
        @testset "checkpoint directory: options, save, completions" begin
            m = load_model(colours, "{\"dtype\": \"float64\"}")
            before = ADPO.params(m)
            out = joinpath(mktempdir(), "saved")
            save_model(m, out)
            @test isfile(joinpath(out, "config.json"))
            @test ADPO.params(load_model(out, "{\"dtype\": \"float64\"}")) == before
            @test_throws ADPOError load_model(colours, "{\"dtype\": \"int8\"}")
            tr = Trainer(m, nothing, (optimizer = (name = "sgd", lr = 0.1),))
            tok = Tokenizer(colours)
            prompt = encode(tok, apply_chat_template(tok, "[{\"role\": \"user\", \"content\": \"Name a colour.\"}]";
                                                     add_generation_prompt=true); add_special_tokens=false)
            b = ADPO.sample(tr, [prompt], 4; sampling=(max_new_tokens = 6, seed = 1))
            ids, lm = token_ids(b), loss_mask(b)
            for r in 1:4
                @test completion(b, r) == ids[r, lm[r, :]]
            end
            @test_throws ADPOError completion(b, 5)
        end
    end

    qwen3 = joinpath(get(ENV, "ADPO_FIXTURES", ""), "hf", "qwen3_gqa2_headdim16_tied")
    if isdir(qwen3)
        @testset "GGUF: save_gguf, save_adapter_gguf" begin
            qwen3_plain = joinpath(dirname(qwen3), "qwen3_sharded_tied")  # no tokenizer
            m = Model(qwen3_plain)
            out = joinpath(mktempdir(), "m.gguf")
            save_gguf(m, out)
            @test read(out, 4) == b"GGUF"
            @test ADPO.params(Model(out)) == ADPO.params(m)
            save_gguf(m, out; options_json = "{\"dtype\": \"q8_0\"}")
            @test filesize(out) < sum(filesize, filter(f -> endswith(f, ".safetensors"), readdir(qwen3_plain; join=true)))
            e = thrown(() -> save_gguf(m, out; options_json = "{\"dtype\": \"q4_0\"}"))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_CONFIG
            e = thrown(() -> save_adapter_gguf(m, joinpath(mktempdir(), "a.gguf")))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_UNSUPPORTED
            lora = load_model(qwen3_plain, "{\"lora\": {\"r\": 4}}")
            adapter = joinpath(mktempdir(), "a.gguf")
            save_adapter_gguf(lora, adapter)
            @test read(adapter, 4) == b"GGUF"
        end

        # The trainer keys of native models (the same cases as the Go and C++ tests).
        @testset "checkpoint directory: trainable, bf16-mixed, activation checkpointing" begin
            m = load_model(qwen3, "{\"dtype\": \"bfloat16\"}")
            tr = Trainer(m, nothing, (optimizer = (name = "sgd", lr = 0.1), precision = "bf16-mixed",
                                      trainable = ["*.mlp.*"], activation_checkpointing = true))
            before = ADPO.params(m)  # the float32 masters of the trainable MLP weights
            b = ADPO.sample(tr, [[3, 9, 4], [5, 1]], 3; sampling=(max_new_tokens = 4, seed = 2))
            set_rewards!(b, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
            step!(tr, b)
            after = ADPO.params(m)
            @test length(after) == length(before) && after != before

            f32 = Model(qwen3)
            e = thrown(() -> Trainer(f32, nothing, (precision = "bf16-mixed",)))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_ARGUMENT
            e = thrown(() -> Trainer(f32, nothing, (trainable = ["*.mpl.*"],)))
            @test e isa ADPOError && e.status == ADPO.ADPO_STATUS_INVALID_CONFIG
            @test occursin("matches no parameter", e.message)
        end
    end

    GC.gc()  # run the finalizers of what is left
end
