// Compiles include/adpo.hpp on its own (built by tests/cpp/CMakeLists.txt with strict warnings):
// the header must be self-contained and warning-free under -std=c++17 -Wall -Wextra -Werror
// -pedantic and more, and harmless to include twice.
#include <adpo.hpp>
#include <adpo.hpp>

// Instantiate the templates so that their bodies are checked too.
template class adpo::View<const double>;
template class adpo::View<double>;
template class adpo::View<const std::int64_t>;
template class adpo::View<std::uint8_t>;

int adpo_hpp_header_check() {
    adpo::View<const double> v = adpo::View<double>();
    return static_cast<int>(v.size());
}
