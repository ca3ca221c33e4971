/* Smoke test for an installed adpo: built by tests/install/run against the
 * installed headers and library, via pkg-config and via CMake's
 * find_package(adpo CONFIG), shared and static. With a model path argument it
 * also loads that model on the CPU (libtorch at work, not only the symbols).
 * Exits non-zero on any mismatch. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include <adpo.h>

int main(int argc, char **argv)
{
    uint32_t abi = adpo_abi_version();
    const char *version = adpo_version();

    if (abi != (uint32_t)ADPO_ABI_VERSION) {
        fprintf(stderr, "hello: ABI mismatch: library %u, header %u\n",
                (unsigned)abi, (unsigned)ADPO_ABI_VERSION);
        return 1;
    }
    if (version == NULL || version[0] == '\0') {
        fprintf(stderr, "hello: adpo_version() returned an empty string\n");
        return 1;
    }
    printf("hello: %s (abi %u)\n", version, (unsigned)abi);
    if (argc < 2) return 0;

    adpo_error *err = NULL;
    adpo_model *model = NULL;
    int64_t vocab = 0;
    size_t params = 0;
    if (adpo_model_load(argv[1], "cpu", &model, &err) != ADPO_STATUS_OK ||
        adpo_model_vocab_size(model, &vocab, &err) != ADPO_STATUS_OK ||
        adpo_model_num_params(model, &params, &err) != ADPO_STATUS_OK) {
        fprintf(stderr, "hello: %s: %s\n", argv[1], adpo_error_message(err));
        adpo_error_free(err);
        adpo_model_free(model);
        return 1;
    }
    adpo_model_free(model);
    if (vocab < 1 || params < 1) {
        fprintf(stderr, "hello: %s: vocab %lld, %zu parameters\n", argv[1], (long long)vocab, params);
        return 1;
    }
    printf("hello: %s on cpu: vocab %lld, %zu parameters\n", argv[1], (long long)vocab, params);
    return 0;
}
