// mmsparse/core.hpp
//
// Module header: tensors and views, dtypes, errors, modality ids, rng, index math, safetensors I/O.
#pragma once

#include <mmsparse/core/config.hpp>
#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/math.hpp>
#include <mmsparse/core/modality.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/safetensors.hpp>
#include <mmsparse/core/tensor.hpp>
#include <mmsparse/core/view.hpp>
