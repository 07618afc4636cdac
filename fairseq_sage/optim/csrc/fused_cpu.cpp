// One fused, multi-tensor SAGE update on CPU: base step -> SAGE multiplier -> decoupled weight
// decay -> apply, for every element of every tensor of a parameter group in a single pass over
// memory (θ, g, the base optimizer's state and Ī are each read once and written once).
//
// fairseq_sage/optim/fused_cpu.py builds this file at first use and documents the arguments; the
// arithmetic is that of fairseq_sage/optim/base_steps.py and fairseq_sage/optim/functional.py, with the
// divisions gathered into one:  θ ← θ − ηλθ − size · (U + ε_s)·num / ((Ī_c + ε_s)·den).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

// x86-64 machines get the loop compiled for AVX-512, AVX2 and the baseline, picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SAGE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SAGE_VECTOR_CLONES
#endif

namespace {

enum class Base : int64_t { Adam = 0, Adamax = 1, SgdMomentum = 2, Sgd = 3 };

// Per group: the base optimizer's coefficients (β1, β2, eps; μ in beta1 for SGD) and SAGE's.
struct GroupConstants {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float beta0, one_minus_beta0, sage_eps;
};

// Per tensor: they depend on its step count t and on the scheduled learning rate η.
struct TensorConstants {
  float step_size;           // "size" of base_steps.BaseStep
  float inverse_correction;  // 1 / (1 − β0^t)
  float decay;               // η·λ
};

// Updates elements [0, n) of one tensor; `first`/`second` are the base optimizer's state
// (m and v, m and u, or the momentum buffer), `ema` is Ī. Unused pointers may be null.
template <Base base, bool sage, typename Weight>
SAGE_VECTOR_CLONES void update_span(
    Weight* __restrict__ weights, const Weight* __restrict__ grads, float* __restrict__ first,
    float* __restrict__ second, float* __restrict__ ema, int64_t n, GroupConstants k,
    TensorConstants t) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = static_cast<float>(grads[i]);
    const float w = static_cast<float>(weights[i]);
    float numerator = g;
    float denominator = 1.0f;
    if constexpr (base == Base::Adam) {
      const float m = first[i] * k.beta1 + k.one_minus_beta1 * g;
      const float v = second[i] * k.beta2 + k.one_minus_beta2 * (g * g);
      first[i] = m;
      second[i] = v;
      numerator = m;
      denominator = std::sqrt(v) + k.eps;
    } else if constexpr (base == Base::Adamax) {
      const float m = first[i] * k.beta1 + k.one_minus_beta1 * g;
      const float decayed = second[i] * k.beta2;
      const float magnitude = std::fabs(g);
      // torch.maximum: NaN in either operand gives NaN
      const float u = (decayed > magnitude || decayed != decayed) ? decayed : magnitude;
      first[i] = m;
      second[i] = u;
      numerator = m;
      denominator = u + k.eps;
    } else if constexpr (base == Base::SgdMomentum) {
      const float b = first[i] * k.beta1 + g;
      first[i] = b;
      numerator = b;
    }
    if constexpr (sage) {
      const float sensitivity = std::fabs(w * g);
      const float average = ema[i] * k.beta0 + k.one_minus_beta0 * sensitivity;
      ema[i] = average;
      const float corrected = average * t.inverse_correction;
      numerator *= std::fabs(sensitivity - corrected) + k.sage_eps;
      denominator *= corrected + k.sage_eps;
    }
    const float decayed_weight = w - t.decay * w;
    weights[i] = static_cast<Weight>(decayed_weight - t.step_size * (numerator / denominator));
  }
}

template <typename T>
T* pointer_or_null(const std::vector<at::Tensor>& tensors, size_t index) {
  return tensors.empty() ? nullptr : tensors[index].data_ptr<T>();
}

template <Base base, bool sage, typename Weight>
void update_tensors(
    const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
    const std::vector<at::Tensor>& first, const std::vector<at::Tensor>& second,
    const std::vector<at::Tensor>& emas, const std::vector<double>& step_sizes,
    const std::vector<double>& ema_corrections, double decay, const GroupConstants& k) {
  const size_t count = params.size();
  std::vector<int64_t> offsets(count + 1, 0);
  for (size_t j = 0; j < count; ++j) offsets[j + 1] = offsets[j] + params[j].numel();
  // The elements of all tensors, end to end, are split evenly among the threads.
  at::parallel_for(0, offsets[count], 1 << 15, [&](int64_t begin, int64_t end) {
    size_t j = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (; j < count && offsets[j] < end; ++j) {
      const int64_t lo = std::max(begin, offsets[j]) - offsets[j];
      const int64_t hi = std::min(end, offsets[j + 1]) - offsets[j];
      if (hi <= lo) continue;
      const TensorConstants t{static_cast<float>(step_sizes[j]),
                              static_cast<float>(1.0 / ema_corrections[j]),
                              static_cast<float>(decay)};
      float* first_j = pointer_or_null<float>(first, j);
      float* second_j = pointer_or_null<float>(second, j);
      float* ema_j = pointer_or_null<float>(emas, j);
      update_span<base, sage, Weight>(
          params[j].data_ptr<Weight>() + lo, grads[j].data_ptr<Weight>() + lo,
          first_j ? first_j + lo : nullptr, second_j ? second_j + lo : nullptr,
          ema_j ? ema_j + lo : nullptr, hi - lo, k, t);
    }
  });
}

template <Base base, bool sage>
void update_by_dtype(
    const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
    const std::vector<at::Tensor>& first, const std::vector<at::Tensor>& second,
    const std::vector<at::Tensor>& emas, const std::vector<double>& step_sizes,
    const std::vector<double>& ema_corrections, double decay, const GroupConstants& k) {
  switch (params.front().scalar_type()) {
    case at::kFloat:
      return update_tensors<base, sage, float>(params, grads, first, second, emas, step_sizes,
                                               ema_corrections, decay, k);
    case at::kHalf:
      return update_tensors<base, sage, at::Half>(params, grads, first, second, emas, step_sizes,
                                                  ema_corrections, decay, k);
    case at::kBFloat16:
      return update_tensors<base, sage, at::BFloat16>(params, grads, first, second, emas,
                                                      step_sizes, ema_corrections, decay, k);
    default:
      TORCH_CHECK(false, "fused SAGE step: unsupported parameter dtype ",
                  params.front().scalar_type());
  }
}

template <Base base>
void update_by_sage(
    const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
    const std::vector<at::Tensor>& first, const std::vector<at::Tensor>& second,
    const std::vector<at::Tensor>& emas, const std::vector<double>& step_sizes,
    const std::vector<double>& ema_corrections, double decay, const GroupConstants& k) {
  if (emas.empty()) {
    update_by_dtype<base, false>(params, grads, first, second, emas, step_sizes, ema_corrections,
                                 decay, k);
  } else {
    update_by_dtype<base, true>(params, grads, first, second, emas, step_sizes, ema_corrections,
                                decay, k);
  }
}

// Checks what the loops above take for granted: one dtype and one layout for all tensors.
void check_arguments(
    const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
    const std::vector<std::vector<at::Tensor>>& states, size_t step_sizes,
    size_t ema_corrections) {
  const size_t count = params.size();
  TORCH_CHECK(grads.size() == count && step_sizes == count && ema_corrections == count,
              "fused SAGE step: lists of different lengths");
  for (size_t j = 0; j < count; ++j) {
    const at::Tensor& p = params[j];
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous(), "fused SAGE step: parameters must be "
                "contiguous CPU tensors");
    TORCH_CHECK(p.scalar_type() == params.front().scalar_type(),
                "fused SAGE step: parameters of different dtypes");
    TORCH_CHECK(grads[j].scalar_type() == p.scalar_type() && grads[j].is_contiguous() &&
                    grads[j].numel() == p.numel(),
                "fused SAGE step: a gradient differs from its parameter in dtype, size or layout");
    for (const auto& state : states) {
      if (state.empty()) continue;
      TORCH_CHECK(state.size() == count, "fused SAGE step: lists of different lengths");
      TORCH_CHECK(state[j].scalar_type() == at::kFloat && state[j].is_contiguous() &&
                      state[j].numel() == p.numel(),
                  "fused SAGE step: optimizer state must be contiguous float32 tensors");
    }
  }
}

}  // namespace

// base: 0 Adam, 1 Adamax, 2 SGD with momentum, 3 SGD; constants: β1 (μ for SGD), β2, eps, β0, ε_s.
void fused_step(
    int64_t base, const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
    const std::vector<at::Tensor>& first, const std::vector<at::Tensor>& second,
    const std::vector<at::Tensor>& emas, const std::vector<double>& step_sizes,
    const std::vector<double>& ema_corrections, double decay, std::vector<double> constants) {
  if (params.empty()) return;
  check_arguments(params, grads, {first, second, emas}, step_sizes.size(), ema_corrections.size());
  TORCH_CHECK(constants.size() == 5, "fused SAGE step: expected 5 constants");
  const double beta1 = constants[0], beta2 = constants[1], beta0 = constants[3];
  const GroupConstants k{static_cast<float>(beta1),  static_cast<float>(1 - beta1),
                         static_cast<float>(beta2),  static_cast<float>(1 - beta2),
                         static_cast<float>(constants[2]), static_cast<float>(beta0),
                         static_cast<float>(1 - beta0), static_cast<float>(constants[4])};
  switch (static_cast<Base>(base)) {
    case Base::Adam:
      return update_by_sage<Base::Adam>(params, grads, first, second, emas, step_sizes,
                                        ema_corrections, decay, k);
    case Base::Adamax:
      return update_by_sage<Base::Adamax>(params, grads, first, second, emas, step_sizes,
                                          ema_corrections, decay, k);
    case Base::SgdMomentum:
      return update_by_sage<Base::SgdMomentum>(params, grads, first, second, emas, step_sizes,
                                               ema_corrections, decay, k);
    case Base::Sgd:
      return update_by_sage<Base::Sgd>(params, grads, first, second, emas, step_sizes,
                                       ema_corrections, decay, k);
  }
  TORCH_CHECK(false, "fused SAGE step: unknown base optimizer ", base);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("fused_step", &fused_step, "One fused SAGE update of a parameter group (CPU)");
}
