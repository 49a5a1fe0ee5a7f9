// mmsparse/layers.hpp
//
// Module header: experts, sparse and dense FFNs, attention, norms, blocks (MoT, MoMa, MoD), the
// model.
#pragma once

#include <mmsparse/layers/attention.hpp>
#include <mmsparse/layers/attention_core.hpp>
#include <mmsparse/layers/block.hpp>
#include <mmsparse/layers/embedding.hpp>
#include <mmsparse/layers/experts.hpp>
#include <mmsparse/layers/generate.hpp>
#include <mmsparse/layers/kv_cache.hpp>
#include <mmsparse/layers/linear.hpp>
#include <mmsparse/layers/loss.hpp>
#include <mmsparse/layers/mod_block.hpp>
#include <mmsparse/layers/model.hpp>
#include <mmsparse/layers/moma_block.hpp>
#include <mmsparse/layers/mot_block.hpp>
#include <mmsparse/layers/norm.hpp>
#include <mmsparse/layers/rope.hpp>
#include <mmsparse/layers/sparse_ffn.hpp>
#include <mmsparse/layers/swiglu_ffn.hpp>
