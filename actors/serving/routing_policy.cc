// RoutingPolicy and its five policies.
#include "actors/serving/routing_policy.h"

#include <algorithm>

namespace troupe::serving {

namespace {

bool Eligible(const std::vector<ReplicaSlot>& replicas, size_t i, size_t exclude) {
  return i != exclude && HasRoom(replicas[i]);
}

size_t CountEligible(const std::vector<ReplicaSlot>& replicas, size_t exclude) {
  size_t m = 0;
  for (size_t i = 0; i < replicas.size(); ++i) m += Eligible(replicas, i, exclude) ? 1 : 0;
  return m;
}

// The index of the k-th (from 0) eligible replica; k < CountEligible().
size_t NthEligible(const std::vector<ReplicaSlot>& replicas, size_t exclude, size_t k) {
  for (size_t i = 0; i < replicas.size(); ++i) {
    if (!Eligible(replicas, i, exclude)) continue;
    if (k == 0) return i;
    --k;
  }
  return RoutingPolicy::kNone;
}

// Each replica in turn, skipping those without room.
class RoundRobin final : public RoutingPolicy {
 public:
  RoutingPolicyKind kind() const override { return RoutingPolicyKind::kRoundRobin; }
  std::optional<size_t> Pick(const std::vector<ReplicaSlot>& replicas, size_t exclude) override {
    const size_t n = replicas.size();
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (next_ + k) % n;
      if (!Eligible(replicas, i, exclude)) continue;
      next_ = (i + 1) % n;
      return i;
    }
    return std::nullopt;
  }
  void Reset() override { next_ = 0; }

 private:
  size_t next_ = 0;
};

// Uniform among the replicas with room: count them, draw one number, walk to it (one draw per
// pick, and no bias towards the replica after a full one, which "random start, then scan" has).
class Random final : public RoutingPolicy {
 public:
  explicit Random(uint64_t seed) : rng_(seed) {}
  RoutingPolicyKind kind() const override { return RoutingPolicyKind::kRandom; }
  std::optional<size_t> Pick(const std::vector<ReplicaSlot>& replicas, size_t exclude) override {
    const size_t m = CountEligible(replicas, exclude);
    if (m == 0) return std::nullopt;
    return NthEligible(replicas, exclude, std::uniform_int_distribution<size_t>(0, m - 1)(rng_));
  }

 private:
  std::mt19937_64 rng_;
};

// Smooth weighted round robin, as nginx's upstream module does it (ngx_http_upstream_round_robin.c,
// "smooth weighted balancing"): every pick adds each candidate's weight to its running score and
// takes the highest score, which then gives back the candidates' total. Over every cycle of picks
// the shares follow the weights exactly, interleaved (weights 5, 1, 1 give a a b a c a a: nginx's
// own example). Chosen over weighted random for that: at 90/10, weighted random sends the small
// version 10 +/- 3 of 100 requests, in bursts; this sends exactly 10, spread out, and draws no
// random numbers. Replicas without room are skipped in that pick, as nginx skips peers that are
// down. Weight 0 takes no traffic.
class Weighted final : public RoutingPolicy {
 public:
  RoutingPolicyKind kind() const override { return RoutingPolicyKind::kWeighted; }
  std::optional<size_t> Pick(const std::vector<ReplicaSlot>& replicas, size_t exclude) override {
    if (score_.size() != replicas.size()) score_.assign(replicas.size(), 0.0);
    double total = 0;
    size_t best = kNone;
    for (size_t i = 0; i < replicas.size(); ++i) {
      const double weight = replicas[i].info.weight;
      if (!(weight > 0) || !Eligible(replicas, i, exclude)) continue;
      score_[i] += weight;
      total += weight;
      if (best == kNone || score_[i] > score_[best]) best = i;
    }
    if (best == kNone) return std::nullopt;
    score_[best] -= total;
    return best;
  }
  void Reset() override { std::fill(score_.begin(), score_.end(), 0.0); }

 private:
  std::vector<double> score_;
};

// The replica with the fewest outstanding requests; ties go to the first one at or after a cursor
// that moves past each pick, so that idle replicas share the light load in turn.
class LeastOutstanding final : public RoutingPolicy {
 public:
  RoutingPolicyKind kind() const override { return RoutingPolicyKind::kLeastOutstanding; }
  std::optional<size_t> Pick(const std::vector<ReplicaSlot>& replicas, size_t exclude) override {
    const size_t n = replicas.size();
    size_t best = kNone;
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (next_ + k) % n;
      if (!Eligible(replicas, i, exclude)) continue;
      if (best == kNone || replicas[i].outstanding < replicas[best].outstanding) best = i;
    }
    if (best == kNone) return std::nullopt;
    next_ = (best + 1) % n;
    return best;
  }
  void Reset() override { next_ = 0; }

 private:
  size_t next_ = 0;
};

// Two distinct replicas with room drawn at random, and the one with fewer outstanding requests
// (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing", 2001: the longest queue
// drops from O(log n / log log n) to O(log log n) against one random choice, at the cost of
// reading two counts; Ray Serve's default router works the same way).
class PowerOfTwoChoices final : public RoutingPolicy {
 public:
  explicit PowerOfTwoChoices(uint64_t seed) : rng_(seed) {}
  RoutingPolicyKind kind() const override { return RoutingPolicyKind::kPowerOfTwoChoices; }
  std::optional<size_t> Pick(const std::vector<ReplicaSlot>& replicas, size_t exclude) override {
    const size_t m = CountEligible(replicas, exclude);
    if (m == 0) return std::nullopt;
    if (m == 1) return NthEligible(replicas, exclude, 0);
    const size_t a = std::uniform_int_distribution<size_t>(0, m - 1)(rng_);
    size_t b = std::uniform_int_distribution<size_t>(0, m - 2)(rng_);
    if (b >= a) ++b;  // distinct: b is drawn from the m - 1 others
    const size_t ia = NthEligible(replicas, exclude, a);
    const size_t ib = NthEligible(replicas, exclude, b);
    return replicas[ib].outstanding < replicas[ia].outstanding ? ib : ia;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

const char* RoutingPolicyName(RoutingPolicyKind kind) {
  switch (kind) {
    case RoutingPolicyKind::kRoundRobin:
      return "round_robin";
    case RoutingPolicyKind::kRandom:
      return "random";
    case RoutingPolicyKind::kWeighted:
      return "weighted";
    case RoutingPolicyKind::kLeastOutstanding:
      return "least_outstanding";
    case RoutingPolicyKind::kPowerOfTwoChoices:
      return "power_of_two_choices";
  }
  return "unknown";
}

StatusOr<RoutingPolicyKind> ParseRoutingPolicy(const std::string& name) {
  for (RoutingPolicyKind kind : {RoutingPolicyKind::kRoundRobin, RoutingPolicyKind::kRandom, RoutingPolicyKind::kWeighted,
                                 RoutingPolicyKind::kLeastOutstanding, RoutingPolicyKind::kPowerOfTwoChoices}) {
    if (name == RoutingPolicyName(kind)) return kind;
  }
  return InvalidArgumentError("unknown routing policy '" + name +
                              "': use round_robin, random, weighted, least_outstanding or power_of_two_choices");
}

std::unique_ptr<RoutingPolicy> MakeRoutingPolicy(RoutingPolicyKind kind, uint64_t seed) {
  switch (kind) {
    case RoutingPolicyKind::kRoundRobin:
      return std::make_unique<RoundRobin>();
    case RoutingPolicyKind::kRandom:
      return std::make_unique<Random>(seed);
    case RoutingPolicyKind::kWeighted:
      return std::make_unique<Weighted>();
    case RoutingPolicyKind::kLeastOutstanding:
      return std::make_unique<LeastOutstanding>();
    case RoutingPolicyKind::kPowerOfTwoChoices:
      return std::make_unique<PowerOfTwoChoices>(seed);
  }
  return std::make_unique<RoundRobin>();
}

}  // namespace troupe::serving
