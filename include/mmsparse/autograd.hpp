// mmsparse/autograd.hpp
//
// Module header: the tape, Var, the parameter arena and the tape adapters of every layer.
#pragma once

#include <mmsparse/autograd/blocks.hpp>
#include <mmsparse/autograd/no_grad.hpp>
#include <mmsparse/autograd/ops.hpp>
#include <mmsparse/autograd/params.hpp>
#include <mmsparse/autograd/tape.hpp>
#include <mmsparse/autograd/var.hpp>
