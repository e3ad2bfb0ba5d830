// Classification metrics computed natively from class probabilities and labels:
// accuracy; precision, recall and F1 per class, macro and weighted (and micro F1);
// Matthews correlation; the confusion matrix as counts and row percentages; and
// one-vs-rest ROC-AUC per class, macro and weighted. Definitions follow
// scikit-learn (zero_division=0; AUC with tied scores counted half).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace enstack::train {

struct ClassificationMetrics {
  int64_t num_classes = 0;
  int64_t count = 0;
  double loss = 0.0;  // mean cross-entropy when computed from logits, else NaN
  double accuracy = 0.0;
  std::vector<double> precision, recall, f1, auc;  // per class (auc NaN where undefined)
  std::vector<int64_t> support;
  double precision_macro = 0, recall_macro = 0, f1_macro = 0;
  double precision_weighted = 0, recall_weighted = 0, f1_weighted = 0;
  double f1_micro = 0, mcc = 0;
  double auc_macro = 0, auc_weighted = 0;  // over classes with both positives and negatives
  std::vector<std::vector<int64_t>> confusion;         // [true class][predicted class]
  std::vector<std::vector<double>> confusion_percent;  // each row sums to 100 (or is all 0)

  // Looks a metric up by its config name (accuracy, f1_weighted, auc_macro, mcc, loss, ...).
  // Throws ConfigError for an unknown name.
  double get(const std::string& name) const;
  nlohmann::json to_json(const std::vector<std::string>& label_names = {}) const;
};

// probabilities: row-major [count x num_classes]; labels: [count] in [0, num_classes).
// Throws DataError for a label out of range or a size mismatch.
ClassificationMetrics compute_metrics(const std::vector<float>& probabilities,
                                      const std::vector<int64_t>& labels, int64_t num_classes);

// AUC of scores for the binary labels (true = positive) by average ranks; NaN when
// one side is empty.
double roc_auc(const std::vector<float>& scores, const std::vector<bool>& positive);

}  // namespace enstack::train
