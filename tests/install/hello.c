/* Smoke test for an installed adpo: built by tests/install/run against the
 * installed headers and library, once via pkg-config and once via CMake's
 * find_package(adpo CONFIG). Exits non-zero on any mismatch. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include <adpo.h>

int main(void)
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
    return 0;
}
