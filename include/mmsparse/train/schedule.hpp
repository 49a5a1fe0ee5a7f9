// mmsparse/train/schedule.hpp
//
// Learning-rate schedule: linear warm-up to peak over `warmup` steps, then cosine decay to
// min_lr at step `total`, then min_lr (the MoT/Transfusion recipe, MoT App. A.2). A pure
// function of the step: resetting it (sparse upcycling, MoMa §2.5) is making a new one.
#pragma once

#include <cmath>
#include <cstdint>

#include <mmsparse/core/error.hpp>

namespace mmsparse {

struct WarmupCosine {
  double peak_lr = 3e-4;
  double min_lr = 0.0;
  std::int64_t warmup = 0;  // steps of linear warm-up
  std::int64_t total = 1;   // step at which the decay reaches min_lr

  // Learning rate of 0-based step `step`.
  [[nodiscard]] double lr_at(std::int64_t step) const {
    MMSPARSE_CHECK(step >= 0, "WarmupCosine::lr_at", "step", ">= 0", step);
    MMSPARSE_CHECK(total > warmup, "WarmupCosine::lr_at", "total", "> warmup", total);
    if (step < warmup) {
      return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
    }
    if (step >= total) {
      return min_lr;
    }
    const double progress =
        static_cast<double>(step - warmup) / static_cast<double>(total - warmup);  // [0, 1)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + std::cos(3.141592653589793 * progress));
  }
};

}  // namespace mmsparse
