// The one deallocator of the fused ops' error strings (fused_ops.h: guarded).
#include <cstdlib>

extern "C" void adpo_fused_free_error(char* message) { std::free(message); }
