// Classification metrics (see enstack/train/metrics.h).
#include "enstack/train/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "enstack/util/error.h"

namespace enstack::train {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double safe_div(double a, double b) { return b == 0 ? 0.0 : a / b; }

double mean_of(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double weighted_mean(const std::vector<double>& v, const std::vector<int64_t>& w) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    num += v[i] * static_cast<double>(w[i]);
    den += static_cast<double>(w[i]);
  }
  return safe_div(num, den);
}

void per_class_scores(ClassificationMetrics& m) {
  const int64_t k = m.num_classes;
  m.precision.assign(k, 0);
  m.recall.assign(k, 0);
  m.f1.assign(k, 0);
  m.support.assign(k, 0);
  int64_t correct = 0;
  for (int64_t c = 0; c < k; ++c) {
    int64_t predicted = 0;
    for (int64_t t = 0; t < k; ++t) predicted += m.confusion[t][c];
    const int64_t tp = m.confusion[c][c];
    m.support[c] = std::accumulate(m.confusion[c].begin(), m.confusion[c].end(), int64_t{0});
    m.precision[c] = safe_div(tp, predicted);
    m.recall[c] = safe_div(tp, m.support[c]);
    m.f1[c] = safe_div(2.0 * tp, predicted + m.support[c]);
    correct += tp;
  }
  m.accuracy = safe_div(correct, m.count);
  m.f1_micro = m.accuracy;  // single-label: micro P = micro R = accuracy
  m.precision_macro = mean_of(m.precision);
  m.recall_macro = mean_of(m.recall);
  m.f1_macro = mean_of(m.f1);
  m.precision_weighted = weighted_mean(m.precision, m.support);
  m.recall_weighted = weighted_mean(m.recall, m.support);
  m.f1_weighted = weighted_mean(m.f1, m.support);
}

// Multiclass Matthews correlation from the confusion matrix (Gorodkin's R_K).
double matthews(const ClassificationMetrics& m) {
  const int64_t k = m.num_classes;
  double trace = 0, sum_tp = 0, sum_t2 = 0, sum_p2 = 0;
  const double s = static_cast<double>(m.count);
  for (int64_t c = 0; c < k; ++c) {
    double t = 0, p = 0;
    for (int64_t o = 0; o < k; ++o) {
      t += static_cast<double>(m.confusion[c][o]);
      p += static_cast<double>(m.confusion[o][c]);
    }
    trace += static_cast<double>(m.confusion[c][c]);
    sum_tp += t * p;
    sum_t2 += t * t;
    sum_p2 += p * p;
  }
  const double denominator = std::sqrt((s * s - sum_p2) * (s * s - sum_t2));
  return denominator == 0 ? 0.0 : (trace * s - sum_tp) / denominator;
}

}  // namespace

double roc_auc(const std::vector<float>& scores, const std::vector<bool>& positive) {
  const std::size_t n = scores.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  double rank_sum = 0;
  int64_t n_pos = 0;
  for (std::size_t i = 0; i < n;) {
    std::size_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) ++j;
    const double average_rank = 0.5 * static_cast<double>(i + 1 + j);  // ranks i+1..j
    for (std::size_t r = i; r < j; ++r) {
      if (positive[order[r]]) {
        rank_sum += average_rank;
        ++n_pos;
      }
    }
    i = j;
  }
  const int64_t n_neg = static_cast<int64_t>(n) - n_pos;
  if (n_pos == 0 || n_neg == 0) return kNaN;
  const double u = rank_sum - 0.5 * static_cast<double>(n_pos) * static_cast<double>(n_pos + 1);
  return u / (static_cast<double>(n_pos) * static_cast<double>(n_neg));
}

ClassificationMetrics compute_metrics(const std::vector<float>& probabilities,
                                      const std::vector<int64_t>& labels, int64_t num_classes) {
  ENSTACK_CHECK(num_classes >= 2, DataError, "metrics need at least 2 classes, got ", num_classes, ".");
  const auto n = static_cast<int64_t>(labels.size());
  ENSTACK_CHECK(static_cast<int64_t>(probabilities.size()) == n * num_classes, DataError,
                "metrics: ", probabilities.size(), " probabilities for ", n, " examples x ", num_classes,
                " classes.");
  ClassificationMetrics m;
  m.num_classes = num_classes;
  m.count = n;
  m.loss = kNaN;
  m.confusion.assign(num_classes, std::vector<int64_t>(num_classes, 0));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = labels[i];
    ENSTACK_CHECK(y >= 0 && y < num_classes, DataError, "label ", y, " of example ", i,
                  " is outside [0, ", num_classes, "); check data.label_names and model.num_labels.");
    const float* row = probabilities.data() + i * num_classes;
    const int64_t predicted = std::max_element(row, row + num_classes) - row;  // first max, as argmax
    ++m.confusion[y][predicted];
  }
  per_class_scores(m);
  m.mcc = matthews(m);
  m.confusion_percent.assign(num_classes, std::vector<double>(num_classes, 0));
  for (int64_t t = 0; t < num_classes; ++t) {
    for (int64_t p = 0; p < num_classes; ++p) {
      m.confusion_percent[t][p] = 100.0 * safe_div(m.confusion[t][p], m.support[t]);
    }
  }
  m.auc.assign(num_classes, kNaN);
  std::vector<float> scores(n);
  std::vector<bool> positive(n);
  std::vector<double> defined;
  std::vector<int64_t> defined_support;
  for (int64_t c = 0; c < num_classes; ++c) {
    for (int64_t i = 0; i < n; ++i) {
      scores[i] = probabilities[i * num_classes + c];
      positive[i] = labels[i] == c;
    }
    m.auc[c] = roc_auc(scores, positive);
    if (!std::isnan(m.auc[c])) {
      defined.push_back(m.auc[c]);
      defined_support.push_back(m.support[c]);
    }
  }
  m.auc_macro = defined.empty() ? kNaN : mean_of(defined);
  m.auc_weighted = defined.empty() ? kNaN : weighted_mean(defined, defined_support);
  return m;
}

double ClassificationMetrics::get(const std::string& name) const {
  if (name == "loss") return loss;
  if (name == "accuracy") return accuracy;
  if (name == "precision_macro") return precision_macro;
  if (name == "recall_macro") return recall_macro;
  if (name == "f1_macro") return f1_macro;
  if (name == "precision_weighted") return precision_weighted;
  if (name == "recall_weighted") return recall_weighted;
  if (name == "f1_weighted") return f1_weighted;
  if (name == "f1_micro") return f1_micro;
  if (name == "mcc") return mcc;
  if (name == "auc_macro") return auc_macro;
  if (name == "auc_weighted") return auc_weighted;
  throw ConfigError(util::str_cat("unknown metric '", name,
                                  "'; use one of loss, accuracy, precision_macro, recall_macro, f1_macro, "
                                  "precision_weighted, recall_weighted, f1_weighted, f1_micro, mcc, "
                                  "auc_macro, auc_weighted."));
}

nlohmann::json ClassificationMetrics::to_json(const std::vector<std::string>& label_names) const {
  auto finite = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
  nlohmann::json per_class = nlohmann::json::array();
  for (int64_t c = 0; c < num_classes; ++c) {
    const std::string name = c < static_cast<int64_t>(label_names.size()) ? label_names[c] : std::to_string(c);
    per_class.push_back({{"label", name}, {"precision", precision[c]}, {"recall", recall[c]}, {"f1", f1[c]},
                         {"support", support[c]}, {"auc", finite(auc[c])}});
  }
  return {{"count", count}, {"loss", finite(loss)}, {"accuracy", accuracy},
          {"precision_macro", precision_macro}, {"recall_macro", recall_macro}, {"f1_macro", f1_macro},
          {"precision_weighted", precision_weighted}, {"recall_weighted", recall_weighted},
          {"f1_weighted", f1_weighted}, {"f1_micro", f1_micro}, {"mcc", mcc},
          {"auc_macro", finite(auc_macro)}, {"auc_weighted", finite(auc_weighted)},
          {"per_class", per_class}, {"confusion", confusion}, {"confusion_percent", confusion_percent}};
}

}  // namespace enstack::train
