// mmsparse/train.hpp
//
// Module header: AdamW, learning-rate schedules, gradient clipping, the tiny trainer.
#pragma once

#include <mmsparse/train/adamw.hpp>
#include <mmsparse/train/clip.hpp>
#include <mmsparse/train/schedule.hpp>
#include <mmsparse/train/tiny_lm.hpp>
