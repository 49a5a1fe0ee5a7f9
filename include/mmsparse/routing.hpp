// mmsparse/routing.hpp
//
// Module header: every routing policy (MoMa §2.2-2.5, Zhou et al., Switch) and the routing plan.
#pragma once

#include <mmsparse/routing/aux_losses.hpp>
#include <mmsparse/routing/aux_router.hpp>
#include <mmsparse/routing/concepts.hpp>
#include <mmsparse/routing/expert_choice.hpp>
#include <mmsparse/routing/gumbel.hpp>
#include <mmsparse/routing/logits.hpp>
#include <mmsparse/routing/mixture_of_depths.hpp>
#include <mmsparse/routing/modality_aware.hpp>
#include <mmsparse/routing/modality_hard.hpp>
#include <mmsparse/routing/plan.hpp>
#include <mmsparse/routing/token_choice.hpp>
#include <mmsparse/routing/validate.hpp>
