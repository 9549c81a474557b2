#include "fourier_attention.h"

#include <cmath>
#include <cstdint>

#include "fourier_attention_spec.h"

namespace fs = fourierformer::spec;

extern "C" const char* ff_validate_attributes(const ff_params* p) {
  if (p == nullptr) return "FourierAttention: null parameter block";
  if (!std::isfinite(p->R) || !(p->R > 0.0f))
    return "FourierAttention: attribute R must be finite and > 0";
  if (p->power < fs::kMinPower || p->power > fs::kMaxPower || (p->power % 2) != 0)
    return "FourierAttention: attribute power must be an even integer with 2 <= power <= 64";
  if (!std::isfinite(p->eps) || !(p->eps > 0.0f))
    return "FourierAttention: attribute eps must be finite and > 0";
  if (p->causal != 0 && p->causal != 1) return "FourierAttention: attribute causal must be 0 or 1";
  return nullptr;
}

extern "C" const char* ff_validate_params(const ff_params* p) {
  if (const char* err = ff_validate_attributes(p)) return err;
  if (p->batch < 0 || p->heads < 0 || p->nq < 0 || p->nk < 0 || p->dim < 0)
    return "FourierAttention: tensor sizes (batch, heads, nq, nk, dim) must be >= 0";
  // Guard against element counts that overflow int64 (or size_t byte counts).
  const double elems = static_cast<double>(p->batch) * static_cast<double>(p->heads) *
                       static_cast<double>(p->nq > p->nk ? p->nq : p->nk) *
                       static_cast<double>(p->dim + 8);
  if (elems > 1e17) return "FourierAttention: tensor sizes are too large";
  return nullptr;
}
