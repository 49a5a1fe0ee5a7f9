// mmsparse/mmsparse.hpp
//
// Umbrella header: the whole CPU library (MoMa arXiv 2407.21770, Mixture-of-Transformers
// arXiv 2411.04996, mixture-of-depths, expert-choice and token-choice routing).
// The CUDA backend lives in backend/cuda and is included from .cu files only.
#pragma once

#include <mmsparse/autograd.hpp>
#include <mmsparse/backend/cpu/backend.hpp>
#include <mmsparse/core.hpp>
#include <mmsparse/dispatch.hpp>
#include <mmsparse/layers.hpp>
#include <mmsparse/routing.hpp>
#include <mmsparse/train.hpp>
