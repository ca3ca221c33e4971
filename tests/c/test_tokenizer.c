/* C ABI tests of tokenizers and chat templates: every adpo_tokenizer_* function, the sizes-first
 * protocol, and every error path (NULL pointers, cap too small, bad JSON, bad UTF-8, ids outside
 * the vocabulary, a template that raises).
 *
 * The fixtures are tests/fixtures/make_tokenizers.py's (ADPO_FIXTURES, default
 * tests/fixtures/generated, then tokenizers/NAME). tests/tokenizer.rs compares every id and
 * rendering with Python; here the expected values are the ones the fixtures fix by
 * construction: the special tokens come first in each vocabulary (qwen: <|endoftext|> 0,
 * <|im_start|> 1, <|im_end|> 2; llama3: <|begin_of_text|> 0 ... <|eot_id|> 4; mistral: <unk> 0,
 * <s> 1, </s> 2, then the 256 byte tokens <0x00> = 3 ...), and the templates' text. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include "check.h"

#include <adpo.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char FIXTURES[4096];

static const char *fixture(const char *name) {
    static char path[4096 + 64];
    snprintf(path, sizeof path, "%s/tokenizers/%s", FIXTURES, name);
    return path;
}

static adpo_tokenizer *load(const char *name) {
    adpo_tokenizer *tok = NULL;
    CHECK_STATUS(adpo_tokenizer_load(fixture(name), &tok, &err), ADPO_STATUS_OK, "");
    if (!tok) {
        fprintf(stderr, "cannot load %s: run `make fixtures` (or set ADPO_FIXTURES)\n", fixture(name));
        exit(check_summary("test_tokenizer"));
    }
    return tok;
}

/* Encodes with the sizes-first protocol into a malloc'ed buffer (*n ids). */
static int64_t *encode(adpo_tokenizer *tok, const char *text, bool special, size_t *n) {
    *n = 0;
    CHECK_STATUS(adpo_tokenizer_encode(tok, text, special, NULL, 0, n, &err), ADPO_STATUS_OK, "");
    int64_t *ids = malloc((*n + 1) * sizeof *ids);
    size_t again = 0;
    CHECK_STATUS(adpo_tokenizer_encode(tok, text, special, ids, *n, &again, &err), ADPO_STATUS_OK, "");
    CHECK(again == *n);
    return ids;
}

static char *decode(adpo_tokenizer *tok, const int64_t *ids, size_t n, bool skip) {
    char *text = NULL;
    CHECK_STATUS(adpo_tokenizer_decode(tok, ids, n, skip, &text, &err), ADPO_STATUS_OK, "");
    return text;
}

static void test_load_and_free(void) {
    adpo_tokenizer *tok = (adpo_tokenizer *)&tok; /* sentinel: must stay untouched on error */
    adpo_tokenizer *const before = tok;
    CHECK_STATUS(adpo_tokenizer_load(NULL, &tok, &err), ADPO_STATUS_NULL_ARGUMENT, "path");
    CHECK_STATUS(adpo_tokenizer_load(fixture("qwen"), NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out");
    CHECK_STATUS(adpo_tokenizer_load(fixture("no-such-tokenizer"), &tok, &err), ADPO_STATUS_IO, "no-such-tokenizer");
    CHECK_STATUS(adpo_tokenizer_load("\xff\xfe", &tok, &err), ADPO_STATUS_INVALID_ARGUMENT, "path is not valid UTF-8");

    /* A directory without tokenizer.json, then with a malformed one. */
    char dir[] = "/tmp/adpo-test-tokenizer-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK_STATUS(adpo_tokenizer_load(dir, &tok, &err), ADPO_STATUS_IO, "no tokenizer.json");
    char file[sizeof dir + 32];
    snprintf(file, sizeof file, "%s/tokenizer.json", dir);
    FILE *f = fopen(file, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"model\": \"not a model\"}", f);
        fclose(f);
    }
    CHECK_STATUS(adpo_tokenizer_load(dir, &tok, &err), ADPO_STATUS_MODEL, "tokenizer.json");
    CHECK_STATUS(adpo_tokenizer_load(file, &tok, &err), ADPO_STATUS_MODEL, "is not a tokenizer.json");
    remove(file);
    rmdir(dir);
    CHECK(tok == before);
    /* err = NULL on a failing call must not crash. */
    CHECK(adpo_tokenizer_load(NULL, &tok, NULL) == ADPO_STATUS_NULL_ARGUMENT);

    /* A tokenizer.json path works as its directory does. */
    char json[4096 + 128];
    snprintf(json, sizeof json, "%s/tokenizer.json", fixture("qwen"));
    adpo_tokenizer *a = NULL;
    CHECK_STATUS(adpo_tokenizer_load(json, &a, &err), ADPO_STATUS_OK, "");
    adpo_tokenizer_free(a);
    adpo_tokenizer_free(NULL);
}

static void test_encode(void) {
    adpo_tokenizer *qwen = load("qwen"), *llama = load("llama3"), *mistral = load("mistral");
    const char *text = "Hello world! Café 東京 🚀 <|im_end|>";
    size_t n = 0, m = 0;
    int64_t *plain = encode(qwen, text, false, &n);
    CHECK(n > 5);
    CHECK(plain[n - 1] == 2); /* the special-token string became <|im_end|> */
    /* Byte-level BPE round-trips any text. */
    char *back = decode(qwen, plain, n, false);
    CHECK(back && strcmp(back, text) == 0);
    adpo_string_free(back);
    back = decode(qwen, plain, n, true); /* skip_special_tokens drops <|im_end|> */
    CHECK(back && strcmp(back, "Hello world! Café 東京 🚀 ") == 0);
    adpo_string_free(back);
    free(plain);

    /* Llama 3's post-processor adds <|begin_of_text|> (0) with special tokens only. */
    int64_t *with = encode(llama, "Hello", true, &n);
    int64_t *without = encode(llama, "Hello", false, &m);
    CHECK(n == m + 1 && with[0] == 0 && memcmp(with + 1, without, m * sizeof *with) == 0);
    free(with);
    free(without);
    /* Mistral: <s> (1), the Metaspace prefix "▁", then a character outside the small alphabet
     * falls back to its UTF-8 bytes: U+1F980 is F0 9F A6 80, the tokens <0xF0> ... = 3 + byte. */
    with = encode(mistral, "🦀", true, &n);
    int64_t meta = -1;
    CHECK_STATUS(adpo_tokenizer_token_to_id(mistral, "\u2581", &meta, &err), ADPO_STATUS_OK, "");
    const int64_t crab[6] = {1, meta, 3 + 0xF0, 3 + 0x9F, 3 + 0xA6, 3 + 0x80};
    CHECK(n == 6 && memcmp(with, crab, sizeof crab) == 0);
    back = decode(mistral, with, n, true);
    CHECK(back && strcmp(back, "🦀") == 0);
    adpo_string_free(back);
    free(with);

    /* Empty text: zero ids; a NULL buffer with cap 0 is fine then too. */
    CHECK_STATUS(adpo_tokenizer_encode(qwen, "", true, NULL, 0, &n, &err), ADPO_STATUS_OK, "");
    CHECK(n == 0);

    /* Cap too small: SHAPE_MISMATCH, no ids written, *out_len still the size. */
    size_t need = 0;
    CHECK_STATUS(adpo_tokenizer_encode(qwen, text, true, NULL, 0, &need, &err), ADPO_STATUS_OK, "");
    int64_t buf[64];
    for (int i = 0; i < 64; i++) buf[i] = -1;
    size_t len = 0;
    CHECK_STATUS(adpo_tokenizer_encode(qwen, text, true, buf, need - 1, &len, &err), ADPO_STATUS_SHAPE_MISMATCH,
                 "cap");
    CHECK(len == need);
    CHECK(buf[0] == -1);
    /* A larger buffer than needed is fine. */
    CHECK_STATUS(adpo_tokenizer_encode(qwen, text, true, buf, 64, &len, &err), ADPO_STATUS_OK, "");
    CHECK(len == need && buf[0] != -1);

    /* Error paths: nothing written. */
    len = 12345;
    CHECK_STATUS(adpo_tokenizer_encode(NULL, text, true, buf, 64, &len, &err), ADPO_STATUS_NULL_ARGUMENT, "tok");
    CHECK_STATUS(adpo_tokenizer_encode(qwen, NULL, true, buf, 64, &len, &err), ADPO_STATUS_NULL_ARGUMENT, "text");
    CHECK_STATUS(adpo_tokenizer_encode(qwen, text, true, buf, 64, NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out_len");
    CHECK_STATUS(adpo_tokenizer_encode(qwen, "caf\xe9", true, buf, 64, &len, &err), ADPO_STATUS_INVALID_ARGUMENT,
                 "text is not valid UTF-8");
    CHECK_STATUS(adpo_tokenizer_encode(qwen, "\xc3", true, buf, 64, &len, &err), ADPO_STATUS_INVALID_ARGUMENT,
                 "UTF-8"); /* a truncated sequence */
    CHECK(len == 12345);
    /* cap > 0 with no buffer. */
    CHECK_STATUS(adpo_tokenizer_encode(qwen, text, true, NULL, 64, &len, &err), ADPO_STATUS_NULL_ARGUMENT, "out_ids");

    adpo_tokenizer_free(qwen);
    adpo_tokenizer_free(llama);
    adpo_tokenizer_free(mistral);
}

static void test_decode(void) {
    adpo_tokenizer *qwen = load("qwen");
    int64_t vocab = 0;
    CHECK_STATUS(adpo_tokenizer_vocab_size(qwen, &vocab, &err), ADPO_STATUS_OK, "");
    CHECK(vocab == 700);
    const int64_t chat[3] = {1, 2, 0};
    char *text = decode(qwen, chat, 3, false);
    CHECK(text && strcmp(text, "<|im_start|><|im_end|><|endoftext|>") == 0);
    adpo_string_free(text);
    text = decode(qwen, chat, 3, true);
    CHECK(text && strcmp(text, "") == 0);
    adpo_string_free(text);
    text = decode(qwen, NULL, 0, false); /* n = 0: no ids needed */
    CHECK(text && strcmp(text, "") == 0);
    adpo_string_free(text);

    char *out = (char *)&out;
    char *const before = out;
    const int64_t oov[3] = {1, 700, 2};
    CHECK_STATUS(adpo_tokenizer_decode(qwen, oov, 3, false, &out, &err), ADPO_STATUS_INVALID_ARGUMENT,
                 "ids[1] = 700 is not in the vocabulary");
    const int64_t negative[1] = {-3};
    CHECK_STATUS(adpo_tokenizer_decode(qwen, negative, 1, false, &out, &err), ADPO_STATUS_INVALID_ARGUMENT,
                 "ids[0] = -3");
    CHECK_STATUS(adpo_tokenizer_decode(qwen, NULL, 2, false, &out, &err), ADPO_STATUS_NULL_ARGUMENT, "ids");
    CHECK_STATUS(adpo_tokenizer_decode(qwen, chat, 3, false, NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out_text");
    CHECK_STATUS(adpo_tokenizer_decode(NULL, chat, 3, false, &out, &err), ADPO_STATUS_NULL_ARGUMENT, "tok");
    CHECK(out == before);
    CHECK_STATUS(adpo_tokenizer_vocab_size(qwen, NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out");
    CHECK_STATUS(adpo_tokenizer_vocab_size(NULL, &vocab, &err), ADPO_STATUS_NULL_ARGUMENT, "tok");
    adpo_tokenizer_free(qwen);
}

static void test_batch(void) {
    adpo_tokenizer *tok = load("llama3");
    const char *texts[4] = {"Hello", "", "The quick brown fox", "東京は日本の首都です。"};
    size_t total = 0, offsets[5];
    memset(offsets, 0xff, sizeof offsets);
    /* Sizes first: total and offsets, no ids. */
    CHECK_STATUS(adpo_tokenizer_encode_batch(tok, texts, 4, true, NULL, 0, offsets, &total, &err), ADPO_STATUS_OK,
                 "");
    CHECK(offsets[0] == 0 && offsets[4] == total);
    int64_t *flat = malloc(total * sizeof *flat);
    size_t again = 0;
    CHECK_STATUS(adpo_tokenizer_encode_batch(tok, texts, 4, true, flat, total, offsets, &again, &err),
                 ADPO_STATUS_OK, "");
    CHECK(again == total);
    /* Each text's ids are what adpo_tokenizer_encode gives it alone. */
    for (int i = 0; i < 4; i++) {
        size_t n = 0;
        int64_t *one = encode(tok, texts[i], true, &n);
        CHECK(offsets[i + 1] - offsets[i] == n);
        CHECK(memcmp(flat + offsets[i], one, n * sizeof *one) == 0);
        free(one);
    }
    /* Back to text: the batch decode of the same layout. */
    char *out[4] = {NULL, NULL, NULL, NULL};
    CHECK_STATUS(adpo_tokenizer_decode_batch(tok, flat, offsets, 4, true, out, &err), ADPO_STATUS_OK, "");
    for (int i = 0; i < 4; i++) {
        CHECK(out[i] && strcmp(out[i], texts[i]) == 0);
        adpo_string_free(out[i]);
    }
    /* Cap too small: SHAPE_MISMATCH, *out_total set, offsets untouched. */
    size_t offsets2[5] = {7, 7, 7, 7, 7};
    again = 0;
    CHECK_STATUS(adpo_tokenizer_encode_batch(tok, texts, 4, true, flat, total - 1, offsets2, &again, &err),
                 ADPO_STATUS_SHAPE_MISMATCH, "cap");
    CHECK(again == total && offsets2[0] == 7);
    /* n = 0 */
    CHECK_STATUS(adpo_tokenizer_encode_batch(tok, NULL, 0, true, NULL, 0, offsets2, &again, &err), ADPO_STATUS_OK,
                 "");
    CHECK(again == 0 && offsets2[0] == 0);
    CHECK_STATUS(adpo_tokenizer_decode_batch(tok, NULL, NULL, 0, true, NULL, &err), ADPO_STATUS_OK, "");

    /* Error paths. */
    const char *with_null[2] = {"a", NULL};
    const char *bad_utf8[2] = {"a", "\xff"};
    CHECK_STATUS(adpo_tokenizer_encode_batch(tok, NULL, 2, true, NULL, 0, NULL, &again, &err),
                 ADPO_STATUS_NULL_ARGUMENT, "texts");
    CHECK_STATUS(adpo_tokenizer_encode_batch(tok, with_null, 2, true, NULL, 0, NULL, &again, &err),
                 ADPO_STATUS_NULL_ARGUMENT, "texts[1]");
    CHECK_STATUS(adpo_tokenizer_encode_batch(tok, bad_utf8, 2, true, NULL, 0, NULL, &again, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "texts[1] is not valid UTF-8");
    CHECK_STATUS(adpo_tokenizer_encode_batch(tok, texts, 4, true, NULL, 0, NULL, NULL, &err),
                 ADPO_STATUS_NULL_ARGUMENT, "out_total");
    CHECK_STATUS(adpo_tokenizer_encode_batch(NULL, texts, 4, true, NULL, 0, NULL, &again, &err),
                 ADPO_STATUS_NULL_ARGUMENT, "tok");

    char *sentinel = (char *)&sentinel;
    char *outs[2] = {sentinel, sentinel};
    const size_t decreasing[3] = {0, 2, 1};
    CHECK_STATUS(adpo_tokenizer_decode_batch(tok, flat, decreasing, 2, false, outs, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "offsets must not decrease");
    const int64_t ids[3] = {0, 1, 9999};
    const size_t two[3] = {0, 1, 3};
    CHECK_STATUS(adpo_tokenizer_decode_batch(tok, ids, two, 2, false, outs, &err), ADPO_STATUS_INVALID_ARGUMENT,
                 "sequence 1: ids[1] = 9999");
    CHECK_STATUS(adpo_tokenizer_decode_batch(tok, ids, NULL, 2, false, outs, &err), ADPO_STATUS_NULL_ARGUMENT,
                 "offsets");
    CHECK_STATUS(adpo_tokenizer_decode_batch(tok, NULL, two, 2, false, outs, &err), ADPO_STATUS_NULL_ARGUMENT, "ids");
    CHECK_STATUS(adpo_tokenizer_decode_batch(tok, ids, two, 2, false, NULL, &err), ADPO_STATUS_NULL_ARGUMENT,
                 "out_texts");
    CHECK(outs[0] == sentinel && outs[1] == sentinel);
    free(flat);
    adpo_tokenizer_free(tok);
}

static int render_is(adpo_tokenizer *tok, const char *messages, const char *options, const char *want) {
    char *text = NULL;
    adpo_error *err = NULL;
    adpo_status st = options ? adpo_tokenizer_apply_chat_template_options(tok, messages, options, &text, &err)
                             : adpo_tokenizer_apply_chat_template(tok, messages, true, &text, &err);
    int ok = st == ADPO_STATUS_OK && text && strcmp(text, want) == 0;
    if (!ok)
        fprintf(stderr, "     rendered \"%s\" (status %d: %s)\n     wanted   \"%s\"\n", text ? text : "(null)", (int)st,
                adpo_error_message(err), want);
    adpo_error_free(err);
    adpo_string_free(text);
    return ok;
}

static void test_chat_template(void) {
    adpo_tokenizer *qwen = load("qwen"), *llama = load("llama3"), *mistral = load("mistral");
    const char *user = "[{\"role\": \"user\", \"content\": \"What is 2 + 2?\"}]";
    CHECK(render_is(qwen, user, NULL,
                    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"));
    char *text = NULL;
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(qwen, user, false, &text, &err), ADPO_STATUS_OK, "");
    CHECK(text && strcmp(text, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                               "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n") == 0);
    adpo_string_free(text);

    /* Options: enable_thinking, a named template, a template's source, tools through tojson. */
    CHECK(render_is(qwen, user, "{\"add_generation_prompt\": true, \"variables\": {\"enable_thinking\": false}}",
                    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    /* NULL and "" options are the defaults: no generation prompt. */
    text = NULL;
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(qwen, user, NULL, &text, &err), ADPO_STATUS_OK, "");
    CHECK(text && strcmp(text, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                               "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n") == 0);
    adpo_string_free(text);
    CHECK(render_is(qwen, user, "", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"));
    CHECK(render_is(qwen, user, "{\"template\": \"{{ messages[0].content.split(' ')[-1] }}|{{ eos_token }}\"}",
                    "2?|<|im_end|>"));
    CHECK(render_is(qwen, user, "{\"template\": \"{{ tools[0] | tojson }}\", \"tools\": [{\"b\": 1.0, \"a\": [1e-05]}]}",
                    "{\"b\": 1.0, \"a\": [1e-05]}"));
    const char *llama_date = "{\"add_generation_prompt\": false, \"variables\": {\"date_string\": \"01 Jan 2025\"}}";
    CHECK(render_is(llama, user, llama_date,
                    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                    "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\n<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 2?<|eot_id|>"));
    /* tools select the "tool_use" template of llama3's list of named templates. */
    text = NULL;
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(
                     llama, user, "{\"tools\": [{\"name\": \"now\"}], \"variables\": {\"date_string\": \"x\"}}", &text,
                     &err),
                 ADPO_STATUS_OK, "");
    CHECK(text && strstr(text, "{\n    \"name\": \"now\"\n}") != NULL);
    adpo_string_free(text);
    /* Mistral folds the system prompt into the first user turn. */
    CHECK(render_is(mistral,
                    "[{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}, "
                    "{\"role\": \"assistant\", \"content\": \"Hello\"}]",
                    NULL, "<s> [INST] Be brief.\n\nHi [/INST] Hello</s>"));

    /* Errors: nothing written. */
    char *out = (char *)&out;
    char *const before = out;
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(
                     mistral, "[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]",
                     true, &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "conversation roles must alternate user/assistant/user/assistant/...");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(qwen, "[{\"role\": \"user\", \"content\": ", true, &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "messages_json is not valid JSON");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(qwen, "{\"role\": \"user\"}", true, &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "must be a JSON list");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(qwen, "[{\"content\": \"hi\"}]", true, &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "messages[0] has no \"role\"");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(qwen, "[{\"role\": \"user\", \"content\": 3}]", true, &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "messages[0].content must be");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(qwen, "[\"\xff\"]", true, &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "messages_json is not valid UTF-8");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(qwen, NULL, true, &out, &err), ADPO_STATUS_NULL_ARGUMENT,
                 "messages_json");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(qwen, user, true, NULL, &err), ADPO_STATUS_NULL_ARGUMENT,
                 "out_text");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template(NULL, user, true, &out, &err), ADPO_STATUS_NULL_ARGUMENT, "tok");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(qwen, user, "{\"add_generation_prompt\": 1", &out, &err),
                 ADPO_STATUS_INVALID_CONFIG, "options_json");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(qwen, user, "{\"tempalte\": \"x\"}", &out, &err),
                 ADPO_STATUS_INVALID_CONFIG, "tempalte");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(qwen, user, "{\"variables\": {\"messages\": 1}}", &out,
                                                            &err),
                 ADPO_STATUS_INVALID_CONFIG, "variables.messages");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(qwen, user, "{\"template\": \"{% if %}\"}", &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "chat template: ");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(qwen, user, "{\"template\": \"{{ raise_exception('no') }}\"}",
                                                            &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "chat template raised an exception: no");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(qwen, user, "\xff", &out, &err),
                 ADPO_STATUS_INVALID_ARGUMENT, "options_json is not valid UTF-8");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(qwen, user, NULL, NULL, &err), ADPO_STATUS_NULL_ARGUMENT,
                 "out_text");
    CHECK_STATUS(adpo_tokenizer_apply_chat_template_options(NULL, user, NULL, &out, &err), ADPO_STATUS_NULL_ARGUMENT,
                 "tok");
    CHECK(out == before);
    adpo_tokenizer_free(qwen);
    adpo_tokenizer_free(llama);
    adpo_tokenizer_free(mistral);
}

static void test_eos_ids_and_tokens(void) {
    adpo_tokenizer *qwen = load("qwen"), *mistral = load("mistral");
    /* qwen's generation_config.json: [<|im_end|>, <|endoftext|>] = [2, 0]; mistral's: 2. */
    size_t n = 0;
    CHECK_STATUS(adpo_tokenizer_eos_ids(qwen, NULL, 0, &n, &err), ADPO_STATUS_OK, "");
    CHECK(n == 2);
    int64_t ids[4] = {-1, -1, -1, -1};
    CHECK_STATUS(adpo_tokenizer_eos_ids(qwen, ids, 1, &n, &err), ADPO_STATUS_SHAPE_MISMATCH, "cap = 1");
    CHECK(n == 2 && ids[0] == -1);
    CHECK_STATUS(adpo_tokenizer_eos_ids(qwen, ids, 4, &n, &err), ADPO_STATUS_OK, "");
    CHECK(n == 2 && ids[0] == 2 && ids[1] == 0 && ids[2] == -1);
    CHECK_STATUS(adpo_tokenizer_eos_ids(mistral, ids, 4, &n, &err), ADPO_STATUS_OK, "");
    CHECK(n == 1 && ids[0] == 2);
    CHECK_STATUS(adpo_tokenizer_eos_ids(qwen, ids, 4, NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out_len");
    CHECK_STATUS(adpo_tokenizer_eos_ids(NULL, ids, 4, &n, &err), ADPO_STATUS_NULL_ARGUMENT, "tok");

    int64_t id = -1;
    CHECK_STATUS(adpo_tokenizer_token_to_id(qwen, "<|im_start|>", &id, &err), ADPO_STATUS_OK, "");
    CHECK(id == 1);
    CHECK_STATUS(adpo_tokenizer_token_to_id(mistral, "<0x41>", &id, &err), ADPO_STATUS_OK, "");
    CHECK(id == 3 + 0x41);
    id = -1;
    CHECK_STATUS(adpo_tokenizer_token_to_id(qwen, "<|no such token|>", &id, &err), ADPO_STATUS_INVALID_ARGUMENT,
                 "is not a token");
    CHECK(id == -1);
    CHECK_STATUS(adpo_tokenizer_token_to_id(qwen, NULL, &id, &err), ADPO_STATUS_NULL_ARGUMENT, "token");
    CHECK_STATUS(adpo_tokenizer_token_to_id(qwen, "x", NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out_id");

    char *s = (char *)&s;
    CHECK_STATUS(adpo_tokenizer_special_token(qwen, "eos_token", &s, &err), ADPO_STATUS_OK, "");
    CHECK(s && strcmp(s, "<|im_end|>") == 0);
    adpo_string_free(s);
    s = (char *)&s;
    CHECK_STATUS(adpo_tokenizer_special_token(qwen, "bos_token", &s, &err), ADPO_STATUS_OK, "");
    CHECK(s == NULL); /* qwen has no BOS token */
    CHECK_STATUS(adpo_tokenizer_special_token(mistral, "bos_token", &s, &err), ADPO_STATUS_OK, "");
    CHECK(s && strcmp(s, "<s>") == 0); /* from the {"content": "<s>"} object form */
    adpo_string_free(s);
    CHECK_STATUS(adpo_tokenizer_special_token(qwen, "bos", &s, &err), ADPO_STATUS_INVALID_ARGUMENT, "bos_token");
    CHECK_STATUS(adpo_tokenizer_special_token(qwen, NULL, &s, &err), ADPO_STATUS_NULL_ARGUMENT, "name");
    CHECK_STATUS(adpo_tokenizer_special_token(qwen, "eos_token", NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out_text");
    adpo_tokenizer_free(qwen);
    adpo_tokenizer_free(mistral);
}

int main(void) {
    const char *env = getenv("ADPO_FIXTURES");
    snprintf(FIXTURES, sizeof FIXTURES, "%s", env && *env ? env : "tests/fixtures/generated");
    test_load_and_free();
    test_encode();
    test_decode();
    test_batch();
    test_chat_template();
    test_eos_ids_and_tokens();
    return check_summary("test_tokenizer");
}
