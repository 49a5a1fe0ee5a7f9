// mmsparse/dispatch.hpp
//
// Module header: the dispersion schemes (sorted gather, padded capacity, dense mask).
#pragma once

#include <mmsparse/dispatch/concepts.hpp>
#include <mmsparse/dispatch/dense_mask.hpp>
#include <mmsparse/dispatch/layout.hpp>
#include <mmsparse/dispatch/padded_capacity.hpp>
#include <mmsparse/dispatch/sorted_gather.hpp>
