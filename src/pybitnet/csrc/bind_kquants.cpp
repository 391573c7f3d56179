// The native K-quant quantizers as a Python function (module.cpp binds the rest).
#include <vector>

#include "bind.h"
#include "formats.h"
#include "kquants.h"

using namespace nb::literals;

namespace pybitnet {

void bind_kquants(nb::module_ &m) {
    using Rows = Array<const float, nb::ndim<2>>;
    m.def(
        "quantize_kquant",
        [](int fmt, Rows x) {
            const int64_t rows = x.shape(0), cols = x.shape(1);
            if ((fmt != kQ6_K && fmt != kQ4_K) || cols % 256)
                throw nb::value_error("quantize_kquant: Q6_K or Q4_K rows of whole 256-blocks");
            // a chunk of rows at a time (kernels.quantize's callers): the copy into bytes is small
            std::vector<uint8_t> out(rows * row_bytes(format_of(static_cast<Format>(fmt)), cols));
            {
                nb::gil_scoped_release released;
                quantize_kquant(fmt, x.data(), rows, cols, out.data());
            }
            return nb::bytes(reinterpret_cast<const char *>(out.data()), out.size());
        },
        "fmt"_a, "x"_a,
        "x (rows, cols) float32 as Q6_K or Q4_K bytes, as llama.cpp's quantize_row_q*_K_ref.");
}

}  // namespace pybitnet
