// test/main.cpp
//
// The Catch2 main shared by every test executable (compiled once, linked into each).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
