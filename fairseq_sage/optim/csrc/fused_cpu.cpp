// One fused, multi-tensor SAGE update on CPU: base step -> SAGE multiplier -> decoupled weight
// decay -> apply, for every element of every tensor of a parameter group in a single pass over
// memory (θ, g, the base optimizer's state and Ī are each read once and written once).
//
// fairseq_sage/optim/fused_cpu.py builds this file at first use and documents the arguments; the
// arithmetic is that of the registry's entries (fairseq_sage/optim/base_steps.py; one line of
// SAGE_KERNEL_BASES and one base_step specialisation here for each entry whose `kernel` names
// it) and of fairseq_sage/optim/functional.py (sage_multiplier below, the formula's one C++
// copy, which every path calls), with the divisions gathered into one:
//     θ ← θ − ηλθ − size · (U + ε_s)·num / ((Ī_c + ε_s)·den).
// all_finite, the finite-gradient check of the torch classes' step, reads the gradients once in
// parallel before that update writes anything. modulate is SAGE(optimizer)'s step after its base
// optimizer's (fairseq_sage/optim/wrapper.py): θ ← (1 − c)·θ_old + m·(θ_new − (1 − c)·θ_old), one
// pass over θ, θ_old, g and Ī.

// The tensor type, ATen's thread pool and torch's pybind11 casters only: torch/extension.h would
// also bring the whole C++ frontend (torch/all.h), which made the first build 2.6 times as long.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

// x86-64 machines get the loop compiled for AVX-512, AVX2 and the baseline, picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SAGE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SAGE_VECTOR_CLONES
#endif

namespace {

// The bases the kernel implements, as X(enumerator, the registry's `kernel` name): the enum, the
// lookup by name and the dispatch are generated from this list.
#define SAGE_KERNEL_BASES(X) \
  X(Adam, "adam")            \
  X(Adamax, "adamax")        \
  X(Sgd, "sgd")              \
  X(Lion, "lion")            \
  X(NAdam, "nadam")

#define SAGE_ENUMERATOR(base, name) base,
enum class Base { SAGE_KERNEL_BASES(SAGE_ENUMERATOR) };
#undef SAGE_ENUMERATOR

constexpr int kMaxCoefficients = 3;  // numbers per tensor a base's step takes besides its size

// Per group: the base optimizers' coefficients and SAGE's.
struct GroupConstants {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, momentum;
  float beta0, one_minus_beta0, sage_eps;
};

// Per tensor: they depend on its step count t and on the scheduled learning rate η.
struct TensorConstants {
  float step_size;                        // "size" of base_steps.BaseStep
  float coefficients[kMaxCoefficients];   // the rest of BaseOptimizer.coefficients
  float correction;                       // 1 − β0^t
  float decay;                            // η·λ
};

// A step num / den: the base step's, or SAGE's multiplier before its division.
struct Fraction {
  float numerator, denominator;
};

// The base step of element i with gradient g: advances its state (`first`, `second`: the
// registry's state buffers, in order; null where the base keeps fewer) and returns numerator /
// denominator (base_steps.py has the equations).
template <Base base>
inline Fraction base_step(float g, float* __restrict__ first, float* __restrict__ second,
                          int64_t i, const GroupConstants& k, const TensorConstants& t);

template <>
inline Fraction base_step<Base::Adam>(float g, float* __restrict__ first,
                                      float* __restrict__ second, int64_t i,
                                      const GroupConstants& k, const TensorConstants&) {
  const float m = first[i] * k.beta1 + k.one_minus_beta1 * g;
  const float v = second[i] * k.beta2 + k.one_minus_beta2 * (g * g);
  first[i] = m;
  second[i] = v;
  return {m, std::sqrt(v) + k.eps};
}

template <>
inline Fraction base_step<Base::Adamax>(float g, float* __restrict__ first,
                                        float* __restrict__ second, int64_t i,
                                        const GroupConstants& k, const TensorConstants&) {
  const float m = first[i] * k.beta1 + k.one_minus_beta1 * g;
  const float decayed = second[i] * k.beta2;
  const float magnitude = std::fabs(g);
  // torch.maximum: NaN in either operand gives NaN
  const float u = (decayed > magnitude || decayed != decayed) ? decayed : magnitude;
  first[i] = m;
  second[i] = u;
  return {m, u + k.eps};
}

// SGD keeps its momentum buffer only with momentum on (`first` is null without; the test is
// loop-invariant, so the compiler hoists it out of the loop).
template <>
inline Fraction base_step<Base::Sgd>(float g, float* __restrict__ first, float*, int64_t i,
                                     const GroupConstants& k, const TensorConstants&) {
  if (first == nullptr) return {g, 1.0f};
  const float b = first[i] * k.momentum + g;
  first[i] = b;
  return {b, 1.0f};
}

template <>
inline Fraction base_step<Base::Lion>(float g, float* __restrict__ first, float*, int64_t i,
                                      const GroupConstants& k, const TensorConstants&) {
  const float m = first[i];
  const float interpolated = m * k.beta1 + k.one_minus_beta1 * g;
  first[i] = m * k.beta2 + k.one_minus_beta2 * g;
  // sign, as torch.sign: 0 for 0 and for NaN
  return {static_cast<float>((interpolated > 0.0f) - (interpolated < 0.0f)), 1.0f};
}

// NAdam: t.coefficients are the weight of g, the weight of m and 1 − β2^t.
template <>
inline Fraction base_step<Base::NAdam>(float g, float* __restrict__ first,
                                       float* __restrict__ second, int64_t i,
                                       const GroupConstants& k, const TensorConstants& t) {
  const float m = first[i] * k.beta1 + k.one_minus_beta1 * g;
  const float v = second[i] * k.beta2 + k.one_minus_beta2 * (g * g);
  first[i] = m;
  second[i] = v;
  return {t.coefficients[0] * g + t.coefficients[1] * m, std::sqrt(v / t.coefficients[2]) + k.eps};
}

// SAGE's multiplier (U + ε_s)/(Ī_c + ε_s) of element i, with weight w and gradient g, as a
// fraction; advances its Ī (`ema`): I = |w·g|, Ī ← β0·Ī + (1−β0)·I, Ī_c = Ī/(1 − β0^t)
// (`correction` is 1 − β0^t), U = |I − Ī_c|. Each operation is rounded to float32 in the order
// of functional.sage_multiplier_foreach_. The one C++ copy of the formula: every path calls it.
inline Fraction sage_multiplier(float w, float g, float* __restrict__ ema, int64_t i,
                                const GroupConstants& k, float correction) {
  const float sensitivity = std::fabs(w * g);
  const float average = ema[i] * k.beta0 + k.one_minus_beta0 * sensitivity;
  ema[i] = average;
  const float corrected = average / correction;
  return {std::fabs(sensitivity - corrected) + k.sage_eps, corrected + k.sage_eps};
}

// Updates elements [0, n) of one tensor; `first`/`second` are the base optimizer's state and
// `ema` is Ī (null where not used).
template <Base base, bool sage, typename Weight>
SAGE_VECTOR_CLONES void update_span(
    Weight* __restrict__ weights, const Weight* __restrict__ grads, float* __restrict__ first,
    float* __restrict__ second, float* __restrict__ ema, int64_t n, GroupConstants k,
    TensorConstants t) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = static_cast<float>(grads[i]);
    const float w = static_cast<float>(weights[i]);
    Fraction step = base_step<base>(g, first, second, i, k, t);
    if constexpr (sage) {
      const Fraction multiplier = sage_multiplier(w, g, ema, i, k, t.correction);
      step.numerator *= multiplier.numerator;
      step.denominator *= multiplier.denominator;
    }
    const float decayed_weight = w - t.decay * w;
    weights[i] = static_cast<Weight>(decayed_weight - t.step_size * (step.numerator / step.denominator));
  }
}

// The tensors of one group (one dtype) and their per-tensor numbers.
struct GroupTensors {
  const std::vector<at::Tensor>& params;
  const std::vector<at::Tensor>& grads;
  const std::vector<at::Tensor>& first;
  const std::vector<at::Tensor>& second;
  const std::vector<at::Tensor>& emas;
  const std::vector<std::vector<double>>& coefficients;  // per tensor: size, then the base's own
  const std::vector<double>& ema_corrections;            // 1 − β0^t
  double decay;
};

// `tensors[index] + offset` as a float pointer, or null when `tensors` is empty.
float* state_or_null(const std::vector<at::Tensor>& tensors, size_t index, int64_t offset) {
  return tensors.empty() ? nullptr : tensors[index].data_ptr<float>() + offset;
}

constexpr int64_t kGrain = 1 << 15;  // elements: the smallest share of a thread

// Calls span(j, lo, hi) on pieces [lo, hi) of the tensors j of `tensors` such that their elements,
// end to end, are split evenly among torch's threads.
template <typename Span>
void parallel_over_elements(const std::vector<at::Tensor>& tensors, const Span& span) {
  const size_t count = tensors.size();
  std::vector<int64_t> offsets(count + 1, 0);
  for (size_t j = 0; j < count; ++j) offsets[j + 1] = offsets[j] + tensors[j].numel();
  at::parallel_for(0, offsets[count], kGrain, [&](int64_t begin, int64_t end) {
    size_t j = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (; j < count && offsets[j] < end; ++j) {
      const int64_t lo = std::max(begin, offsets[j]) - offsets[j];
      const int64_t hi = std::min(end, offsets[j + 1]) - offsets[j];
      if (hi > lo) span(j, lo, hi);
    }
  });
}

template <Base base, bool sage, typename Weight>
void update_tensors(const GroupTensors& group, const GroupConstants& k) {
  parallel_over_elements(group.params, [&](size_t j, int64_t lo, int64_t hi) {
    const std::vector<double>& numbers = group.coefficients[j];
    TensorConstants t{static_cast<float>(numbers[0]), {0.0f, 0.0f, 0.0f},
                      static_cast<float>(group.ema_corrections[j]), static_cast<float>(group.decay)};
    for (size_t c = 1; c < numbers.size(); ++c) t.coefficients[c - 1] = static_cast<float>(numbers[c]);
    update_span<base, sage, Weight>(
        group.params[j].data_ptr<Weight>() + lo, group.grads[j].data_ptr<Weight>() + lo,
        state_or_null(group.first, j, lo), state_or_null(group.second, j, lo),
        state_or_null(group.emas, j, lo), hi - lo, k, t);
  });
}

// Calls body(Weight{}) with the C++ type of the weights' dtype (float32, float16 or bfloat16).
template <typename Body>
void with_weight_type(at::ScalarType dtype, const char* what, const Body& body) {
  switch (dtype) {
    case at::kFloat:
      return body(float{});
    case at::kHalf:
      return body(at::Half{});
    case at::kBFloat16:
      return body(at::BFloat16{});
    default:
      TORCH_CHECK(false, what, ": unsupported parameter dtype ", dtype);
  }
}

template <Base base, bool sage>
void update_by_dtype(const GroupTensors& group, const GroupConstants& k) {
  with_weight_type(group.params.front().scalar_type(), "fused SAGE step", [&](auto weight) {
    update_tensors<base, sage, decltype(weight)>(group, k);
  });
}

// Per tensor, for the modulation: 1 − β0^t and 1 − c.
struct ModulationConstants {
  float correction, keep;
};

// SAGE(optimizer)'s modulation of elements [0, n) of one tensor after its base optimizer's step:
// with θ_old (`olds`), its gradient g, θ_new (what the base step wrote to `weights`) and the c of
// its decoupled decay, advances Ī (`ema`) and writes θ ← (θ_new − d)·m + d, d = θ_old·(1 − c),
// m = sage_multiplier(θ_old, g). The operations, each rounded to float32, are those of the
// foreach path (functional.sage_multiplier_foreach_, wrapper.SAGE._modulate), in its order.
template <typename Weight>
SAGE_VECTOR_CLONES void modulate_span(Weight* __restrict__ weights, const Weight* __restrict__ olds,
                                      const Weight* __restrict__ grads, float* __restrict__ ema,
                                      int64_t n, GroupConstants k, ModulationConstants t) {
  for (int64_t i = 0; i < n; ++i) {
    const float old = static_cast<float>(olds[i]);
    const Fraction multiplier = sage_multiplier(old, static_cast<float>(grads[i]), ema, i, k, t.correction);
    const float m = multiplier.numerator / multiplier.denominator;
    const float decayed = old * t.keep;
    weights[i] = static_cast<Weight>((static_cast<float>(weights[i]) - decayed) * m + decayed);
  }
}

template <Base base>
void update_by_sage(const GroupTensors& group, const GroupConstants& k) {
  if (group.emas.empty()) {
    update_by_dtype<base, false>(group, k);
  } else {
    update_by_dtype<base, true>(group, k);
  }
}

// The kernel's base for a registry `kernel` name.
Base base_named(const std::string& name) {
#define SAGE_NAME_TEST(base, base_name) \
  if (name == base_name) return Base::base;
  SAGE_KERNEL_BASES(SAGE_NAME_TEST)
#undef SAGE_NAME_TEST
  TORCH_CHECK(false, "fused SAGE step: the kernel does not implement base optimizer '", name, "'");
}

// Checks what the loops above take for granted: one dtype and one layout for all tensors.
void check_arguments(const GroupTensors& group) {
  const auto& params = group.params;
  const size_t count = params.size();
  TORCH_CHECK(group.grads.size() == count && group.coefficients.size() == count &&
                  group.ema_corrections.size() == count,
              "fused SAGE step: lists of different lengths");
  for (size_t j = 0; j < count; ++j) {
    const at::Tensor& p = params[j];
    TORCH_CHECK(!group.coefficients[j].empty() &&
                    group.coefficients[j].size() <= 1 + kMaxCoefficients,
                "fused SAGE step: each tensor takes its size and at most ", kMaxCoefficients,
                " coefficients");
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous(), "fused SAGE step: parameters must be "
                "contiguous CPU tensors");
    TORCH_CHECK(p.scalar_type() == params.front().scalar_type(),
                "fused SAGE step: parameters of different dtypes");
    TORCH_CHECK(group.grads[j].scalar_type() == p.scalar_type() && group.grads[j].is_contiguous() &&
                    group.grads[j].numel() == p.numel(),
                "fused SAGE step: a gradient differs from its parameter in dtype, size or layout");
    for (const auto* state : {&group.first, &group.second, &group.emas}) {
      if (state->empty()) continue;
      TORCH_CHECK(state->size() == count, "fused SAGE step: lists of different lengths");
      TORCH_CHECK((*state)[j].scalar_type() == at::kFloat && (*state)[j].is_contiguous() &&
                      (*state)[j].numel() == p.numel(),
                  "fused SAGE step: optimizer state must be contiguous float32 tensors");
    }
  }
}

// The largest exponent field among n floating-point numbers given by their bits; it equals
// `exponent` (all ones) exactly when one of them is an infinity or a NaN.
template <typename Bits>
SAGE_VECTOR_CLONES Bits largest_exponent(const Bits* __restrict__ bits, int64_t n, Bits exponent) {
  Bits largest = 0;
  for (int64_t i = 0; i < n; ++i) largest = std::max<Bits>(largest, bits[i] & exponent);
  return largest;
}

// Whether no element in [lo, hi) of `tensor` (float32, float16 or bfloat16) is an infinity or a NaN.
bool span_is_finite(const at::Tensor& tensor, int64_t lo, int64_t hi) {
  const void* data = tensor.data_ptr();
  switch (tensor.scalar_type()) {
    case at::kFloat: {
      const uint32_t exponent = 0x7f800000u;
      return largest_exponent(static_cast<const uint32_t*>(data) + lo, hi - lo, exponent) != exponent;
    }
    case at::kHalf: {
      const uint16_t exponent = 0x7c00u;
      return largest_exponent(static_cast<const uint16_t*>(data) + lo, hi - lo, exponent) != exponent;
    }
    case at::kBFloat16: {
      const uint16_t exponent = 0x7f80u;
      return largest_exponent(static_cast<const uint16_t*>(data) + lo, hi - lo, exponent) != exponent;
    }
    default:
      TORCH_CHECK(false, "finite check: unsupported dtype ", tensor.scalar_type());
  }
}

}  // namespace

// True when no element of `tensors` (contiguous CPU float32/float16/bfloat16 tensors, dtypes may
// differ) is an infinity or a NaN; the threads stop early once one is found.
bool all_finite(const std::vector<at::Tensor>& tensors) {
  for (const auto& tensor : tensors) {
    TORCH_CHECK(tensor.device().is_cpu() && tensor.is_contiguous(),
                "finite check: tensors must be contiguous CPU tensors");
  }
  std::atomic<bool> finite{true};
  parallel_over_elements(tensors, [&](size_t j, int64_t lo, int64_t hi) {
    for (int64_t start = lo; start < hi; start += kGrain) {
      if (!finite.load(std::memory_order_relaxed)) return;
      if (!span_is_finite(tensors[j], start, std::min(hi, start + kGrain))) {
        finite.store(false, std::memory_order_relaxed);
        return;
      }
    }
  });
  return finite.load();
}

// base: the registry's `kernel` name; first/second: its state buffers (empty lists where it keeps
// fewer); emas: Ī (empty: SAGE off); coefficients: per tensor, the registry's numbers (size, then
// those of the base's step); constants: β1, β2, eps, momentum, β0, ε_s.
void fused_step(
    const std::string& base, const std::vector<at::Tensor>& params,
    const std::vector<at::Tensor>& grads, const std::vector<at::Tensor>& first,
    const std::vector<at::Tensor>& second, const std::vector<at::Tensor>& emas,
    const std::vector<std::vector<double>>& coefficients,
    const std::vector<double>& ema_corrections, double decay,
    const std::vector<double>& constants) {
  if (params.empty()) return;
  const GroupTensors group{params, grads, first, second, emas, coefficients, ema_corrections, decay};
  check_arguments(group);
  TORCH_CHECK(constants.size() == 6, "fused SAGE step: expected 6 constants");
  const double beta1 = constants[0], beta2 = constants[1], beta0 = constants[4];
  const GroupConstants k{static_cast<float>(beta1),        static_cast<float>(1 - beta1),
                         static_cast<float>(beta2),        static_cast<float>(1 - beta2),
                         static_cast<float>(constants[2]), static_cast<float>(constants[3]),
                         static_cast<float>(beta0),        static_cast<float>(1 - beta0),
                         static_cast<float>(constants[5])};
  switch (base_named(base)) {
#define SAGE_DISPATCH(base, name) \
  case Base::base:                \
    return update_by_sage<Base::base>(group, k);
    SAGE_KERNEL_BASES(SAGE_DISPATCH)
#undef SAGE_DISPATCH
  }
}

// params: θ_new, overwritten with the result; olds: θ_old; grads: g (all of one dtype, contiguous
// CPU); emas: Ī (float32); ema_corrections: 1 − β0^t and decays: c, per tensor.
void modulate(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& olds,
              const std::vector<at::Tensor>& grads, const std::vector<at::Tensor>& emas,
              const std::vector<double>& ema_corrections, const std::vector<double>& decays,
              double beta0, double sage_eps) {
  if (params.empty()) return;
  const size_t count = params.size();
  TORCH_CHECK(olds.size() == count && grads.size() == count && emas.size() == count &&
                  ema_corrections.size() == count && decays.size() == count,
              "SAGE modulation: lists of different lengths");
  for (size_t j = 0; j < count; ++j) {
    const at::Tensor& p = params[j];
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous() && p.scalar_type() == params.front().scalar_type(),
                "SAGE modulation: parameters must be contiguous CPU tensors of one dtype");
    for (const auto* same : {&olds[j], &grads[j]}) {
      TORCH_CHECK(same->scalar_type() == p.scalar_type() && same->is_contiguous() &&
                      same->numel() == p.numel(),
                  "SAGE modulation: θ_old or g differs from its parameter in dtype, size or layout");
    }
    TORCH_CHECK(emas[j].scalar_type() == at::kFloat && emas[j].is_contiguous() &&
                    emas[j].numel() == p.numel(),
                "SAGE modulation: Ī must be contiguous float32 tensors");
  }
  const GroupConstants k{0, 0, 0, 0, 0, 0, static_cast<float>(beta0), static_cast<float>(1 - beta0),
                         static_cast<float>(sage_eps)};
  with_weight_type(params.front().scalar_type(), "SAGE modulation", [&](auto weight) {
    using Weight = decltype(weight);
    parallel_over_elements(params, [&](size_t j, int64_t lo, int64_t hi) {
      const ModulationConstants t{static_cast<float>(ema_corrections[j]), static_cast<float>(1 - decays[j])};
      modulate_span<Weight>(params[j].data_ptr<Weight>() + lo, olds[j].data_ptr<Weight>() + lo,
                            grads[j].data_ptr<Weight>() + lo, emas[j].data_ptr<float>() + lo, hi - lo, k, t);
    });
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("modulate", &modulate, "SAGE(optimizer)'s modulation of its base optimizer's step (CPU)");
  module.def("fused_step", &fused_step, "One fused SAGE update of a parameter group (CPU)");
  module.def("all_finite", &all_finite, "Whether no element of the tensors is an infinity or a NaN");
}
