// The portable PRNG (against published SplitMix64 / xoshiro256** outputs) and
// EpochPlan: permutations, purity, batch slicing, length grouping, windows.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "enstack/data/epoch_plan.h"
#include "enstack/util/error.h"
#include "enstack/util/rng.h"

namespace enstack::data {
namespace {

EpochPlanConfig config(int64_t n, int64_t batch_size, uint64_t seed = 42, int64_t epoch = 0) {
  EpochPlanConfig c;
  c.num_examples = n;
  c.batch_size = batch_size;
  c.seed = seed;
  c.epoch = epoch;
  return c;
}

std::vector<int64_t> concat_batches(const EpochPlan& plan) {
  std::vector<int64_t> all;
  for (int64_t k = 0; k < plan.num_batches(); ++k) {
    const auto b = plan.batch(k);
    all.insert(all.end(), b.begin(), b.end());
  }
  return all;
}

bool is_permutation_of_range(std::vector<int64_t> v, int64_t n) {
  std::sort(v.begin(), v.end());
  std::vector<int64_t> expected(static_cast<std::size_t>(n));
  std::iota(expected.begin(), expected.end(), int64_t{0});
  return v == expected;
}

TEST(RngTest, SplitMix64MatchesPublishedOutputs) {
  util::SplitMix64 sm(0);
  EXPECT_EQ(sm.next(), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(sm.next(), 0x6e789e6aa1b965f4ULL);
  EXPECT_EQ(sm.next(), 0x06c45d188009454fULL);
}

TEST(RngTest, SplitMix64AtReadsAnyPositionOfTheStream) {
  // The random-access form dropout masks use equals stepping the generator.
  for (uint64_t seed : {uint64_t{0}, uint64_t{42}, ~uint64_t{0}}) {
    util::SplitMix64 sm(seed);
    for (uint64_t i = 0; i < 1000; ++i) EXPECT_EQ(util::splitmix64_at(seed, i), sm.next()) << seed << " " << i;
  }
}

TEST(RngTest, Xoshiro256StarStarMatchesReferenceVectors) {
  // The reference implementation's first outputs from the state {1, 2, 3, 4}.
  auto rng = util::Rng::from_state({1, 2, 3, 4});
  const uint64_t expected[] = {11520ULL, 0ULL, 1509978240ULL, 1215971899390074240ULL, 1216172134540287360ULL,
                               607988272756665600ULL, 16172922978634559625ULL, 8476171486693032832ULL,
                               10595114339597558777ULL, 2904607092377533576ULL};
  for (uint64_t value : expected) EXPECT_EQ(rng.next_u64(), value);
}

TEST(RngTest, SeedingIsSplitMix64IntoXoshiro) {
  // Computed with an independent Python transcription of both reference algorithms.
  util::Rng rng(42);
  EXPECT_EQ(rng.next_u64(), 0x15780b2e0c2ec716ULL);
  EXPECT_EQ(rng.next_u64(), 0x6104d9866d113a7eULL);
  EXPECT_EQ(rng.next_u64(), 0xae17533239e499a1ULL);
  EXPECT_EQ(rng.next_u64(), 0xecb8ad4703b360a1ULL);
  EXPECT_EQ(rng.next_u64(), 0xfde6dc7fe2ec5e64ULL);
}

TEST(RngTest, UniformBelowIsInRangeAndRoughlyUniform) {
  util::Rng rng(7);
  constexpr int kBuckets = 10;
  constexpr int kDraws = 100000;
  std::vector<int> counts(kBuckets, 0);
  for (int i = 0; i < kDraws; ++i) {
    const uint64_t v = rng.uniform_below(kBuckets);
    ASSERT_LT(v, static_cast<uint64_t>(kBuckets));
    ++counts[v];
  }
  for (int c : counts) EXPECT_NEAR(c, kDraws / kBuckets, 500);  // ~5 standard deviations
  EXPECT_EQ(rng.uniform_below(1), 0u);
  // A bound near 2^64 exercises the rejection path and the wide multiply.
  const uint64_t big = (1ULL << 63) + 12345;
  for (int i = 0; i < 1000; ++i) EXPECT_LT(rng.uniform_below(big), big);
}

TEST(RngTest, UniformBelowHasTheLemireValueForAKnownDraw) {
  // uniform_below(n) is the high word of next_u64() * n when no rejection happens.
  util::Rng a(42), b(42);
  const uint64_t x = b.next_u64();
#ifdef __SIZEOF_INT128__
  const auto expected = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * 1000003ULL) >> 64);
  EXPECT_EQ(a.uniform_below(1000003), expected);
#else
  EXPECT_LT(a.uniform_below(1000003), 1000003u);
#endif
}

TEST(RngTest, ShuffleIsADeterministicPermutation) {
  std::vector<int64_t> a(100), b(100);
  std::iota(a.begin(), a.end(), int64_t{0});
  std::iota(b.begin(), b.end(), int64_t{0});
  util::Rng(3).shuffle(a);
  util::Rng(3).shuffle(b);
  EXPECT_EQ(a, b);
  EXPECT_TRUE(is_permutation_of_range(a, 100));
  std::vector<int64_t> identity(100);
  std::iota(identity.begin(), identity.end(), int64_t{0});
  EXPECT_NE(a, identity);
  // Pinned (an independent Python transcription gives the same): a change here
  // would change every epoch order and break resuming old checkpoints.
  std::vector<int64_t> small = {0, 1, 2, 3, 4, 5, 6, 7};
  util::Rng(0).shuffle(small);
  EXPECT_EQ(small, (std::vector<int64_t>{1, 6, 3, 7, 2, 0, 5, 4}));
}

TEST(EpochPlanTest, IsAPermutationWithAShortLastBatch) {
  EpochPlan plan(config(103, 10));
  EXPECT_EQ(plan.num_batches(), 11);
  EXPECT_TRUE(is_permutation_of_range(concat_batches(plan), 103));
  EXPECT_EQ(plan.batch_size_of(0), 10);
  EXPECT_EQ(plan.batch_size_of(10), 3);
  EXPECT_EQ(plan.batch(10).size(), 3u);
  EXPECT_THROW(plan.batch(11), DataError);
  EXPECT_THROW(plan.batch(-1), DataError);
}

TEST(EpochPlanTest, OrderIsPinnedForAFixedSeed) {
  // Rng(mix_seed(mix_seed(seed, epoch), 0)).shuffle(0..n-1), computed independently.
  EXPECT_EQ(EpochPlan(config(20, 6, 42, 0)).order(),
            (std::vector<int64_t>{16, 15, 19, 14, 7, 9, 0, 11, 17, 3, 18, 6, 13, 2, 5, 10, 8, 12, 1, 4}));
  EXPECT_EQ(EpochPlan(config(20, 6, 42, 1)).order(),
            (std::vector<int64_t>{5, 14, 1, 7, 16, 18, 17, 11, 8, 9, 0, 4, 15, 19, 6, 2, 12, 3, 13, 10}));
}

TEST(EpochPlanTest, SameInputsGiveTheSamePlan) {
  EpochPlan a(config(500, 16, 9, 2)), b(config(500, 16, 9, 2));
  EXPECT_EQ(a.order(), b.order());
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  EXPECT_EQ(a.fingerprint().size(), 16u);
}

TEST(EpochPlanTest, EpochAndSeedChangeTheOrder) {
  EpochPlan base(config(500, 16, 9, 2));
  EpochPlan other_epoch(config(500, 16, 9, 3));
  EpochPlan other_seed(config(500, 16, 10, 2));
  EXPECT_NE(base.order(), other_epoch.order());
  EXPECT_NE(base.order(), other_seed.order());
  EXPECT_NE(base.fingerprint(), other_epoch.fingerprint());
}

TEST(EpochPlanTest, WithoutShuffleTheOrderIsSequential) {
  auto c = config(25, 4);
  c.shuffle = false;
  EpochPlan plan(c);
  EXPECT_EQ(plan.batch(0), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(plan.batch(6), (std::vector<int64_t>{24}));
}

TEST(EpochPlanTest, BatchKIsTheKthSliceOfTheOrder) {
  EpochPlan plan(config(77, 8, 1, 5));
  for (int64_t k = 0; k < plan.num_batches(); ++k) {
    const auto begin = plan.order().begin() + k * 8;
    const auto end = plan.order().begin() + std::min<int64_t>(77, (k + 1) * 8);
    EXPECT_EQ(plan.batch(k), std::vector<int64_t>(begin, end));
  }
}

TEST(EpochPlanTest, GroupByLengthMakesHomogeneousBatches) {
  const int64_t n = 1234, bs = 4;
  std::vector<int64_t> lengths(n);
  for (int64_t i = 0; i < n; ++i) lengths[i] = (i * 7919) % 509 + 1;
  auto c = config(n, bs, 5, 1);
  c.group_by_length = true;
  EpochPlan plan(c, lengths);
  EXPECT_TRUE(is_permutation_of_range(concat_batches(plan), n));
  // Batch order is shuffled but whole batches stay sorted (longest first), and
  // the short remainder batch is last.
  for (int64_t k = 0; k < plan.num_batches(); ++k) {
    const auto b = plan.batch(k);
    for (std::size_t i = 1; i < b.size(); ++i) EXPECT_GE(lengths[b[i - 1]], lengths[b[i]]);
  }
  EXPECT_EQ(plan.batch_size_of(plan.num_batches() - 1), n % bs);
  // Length-homogeneous: far less padding than the same batches of a plain shuffle.
  auto padding = [&](const EpochPlan& p) {
    int64_t pad = 0;
    for (int64_t k = 0; k < p.num_batches(); ++k) {
      const auto b = p.batch(k);
      int64_t longest = 0;
      for (auto i : b) longest = std::max(longest, lengths[i]);
      for (auto i : b) pad += longest - lengths[i];
    }
    return pad;
  };
  EpochPlan plain(config(n, bs, 5, 1));
  EXPECT_LT(padding(plan) * 10, padding(plain));
  // The plan is pure, and the batch holding the longest example moves around.
  EXPECT_EQ(plan.order(), EpochPlan(c, lengths).order());
  std::set<int64_t> positions_of_longest;
  const auto longest = std::max_element(lengths.begin(), lengths.end()) - lengths.begin();
  for (int64_t epoch = 0; epoch < 8; ++epoch) {
    c.epoch = epoch;
    EpochPlan p(c, lengths);
    const auto at = std::find(p.order().begin(), p.order().end(), longest) - p.order().begin();
    positions_of_longest.insert(at / bs);
  }
  EXPECT_GT(positions_of_longest.size(), 1u);
}

TEST(EpochPlanTest, GroupByLengthSortsWithinEachMegaBatch) {
  const int64_t n = 1000, bs = 2;  // mega-batches of 100
  std::vector<int64_t> lengths(n);
  for (int64_t i = 0; i < n; ++i) lengths[i] = (i * 31) % 97;
  auto c = config(n, bs, 11);
  c.group_by_length = true;
  c.shuffle = false;  // no shuffles: the mega-batches are 0..99, 100..199, ... sorted
  EpochPlan plan(c, lengths);
  const auto& order = plan.order();
  for (int64_t m = 0; m < n; m += bs * EpochPlan::kMegaBatchMultiplier) {
    std::set<int64_t> members(order.begin() + m, order.begin() + m + 100);
    EXPECT_EQ(*members.begin(), m);
    EXPECT_EQ(*members.rbegin(), m + 99);
    EXPECT_TRUE(std::is_sorted(order.begin() + m, order.begin() + m + 100,
                               [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; }));
  }
}

TEST(EpochPlanTest, GroupByLengthNeedsOneLengthPerExample) {
  auto c = config(10, 2);
  c.group_by_length = true;
  std::vector<int64_t> lengths(9, 1);
  EXPECT_THROW(EpochPlan(c, lengths), DataError);
}

TEST(EpochPlanTest, RejectsBadConfigs) {
  EXPECT_THROW(EpochPlan(config(0, 4)), DataError);
  EXPECT_THROW(EpochPlan(config(10, 0)), ConfigError);
  EXPECT_THROW(EpochPlan(config(10, 2, 1, -1)), ConfigError);
  EXPECT_THROW(EpochPlan(config(10, 2)).windows(0), ConfigError);
}

TEST(EpochPlanTest, WindowsCoverTheEpochAndWeighTheRaggedTail) {
  EpochPlan plan(config(103, 10));  // 11 batches, the last holds 3
  const auto windows = plan.windows(4);
  ASSERT_EQ(windows.size(), 3u);
  EXPECT_EQ(EpochPlan::num_windows(plan.num_batches(), 4), 3);
  int64_t total = 0;
  for (std::size_t w = 0; w < windows.size(); ++w) {
    EXPECT_EQ(windows[w].index, static_cast<int64_t>(w));
    total += windows[w].num_samples;
  }
  EXPECT_EQ(total, 103);
  EXPECT_EQ(windows[0].first_batch, 0);
  EXPECT_EQ(windows[0].end_batch, 4);
  EXPECT_EQ(windows[0].num_samples, 40);
  EXPECT_EQ(windows[2].first_batch, 8);
  EXPECT_EQ(windows[2].end_batch, 11);
  EXPECT_EQ(windows[2].num_samples, 23);  // 10 + 10 + 3
  // The count is what the batches actually hold.
  for (const auto& w : windows) {
    int64_t held = 0;
    for (int64_t k = w.first_batch; k < w.end_batch; ++k) held += plan.batch_size_of(k);
    EXPECT_EQ(held, w.num_samples);
  }
  // grad_accum 1: one window per batch; larger than the epoch: one window.
  EXPECT_EQ(plan.windows(1).size(), 11u);
  EXPECT_EQ(plan.windows(1).back().num_samples, 3);
  ASSERT_EQ(plan.windows(50).size(), 1u);
  EXPECT_EQ(plan.windows(50)[0].num_samples, 103);
}

}  // namespace
}  // namespace enstack::data
