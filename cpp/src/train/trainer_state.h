// The trainer's resumable position and bookkeeping (trainer_state.json), and
// reading/writing full-state checkpoints. Private to the trainer.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <limits>
#include <optional>
#include <string>

#include "enstack/ckpt/snapshot.h"
#include "enstack/model/encoder_classifier.h"
#include "enstack/train/adamw.h"
#include "enstack/train/grad_scaler.h"
#include "enstack/train/checkpoint_format.h"
#include "enstack/train/swa.h"
#include "enstack/train/trainer.h"

namespace enstack::train {

// The full training state as a snapshot for ckpt::AsyncSaver. Small state is copied
// at once; CPU weights, moments and the SWA average are copied by the saver's copy
// thread (deferred), so the caller must saver.wait_for_snapshots() before the next
// optimizer step or SWA update. `swa` may be null.
ckpt::Snapshot snapshot_full_checkpoint(const model::EncoderClassifier& model, const AdamW& optimizer,
                                        const GradScaler& scaler, const SwaAverage* swa, const TrainerState& state,
                                        const nlohmann::json& options, const torch::Device& device,
                                        ckpt::BufferPool* pool,
                                        const std::map<std::string, torch::Tensor>& rank_rng = {});

// A model-only snapshot (best/, swa/): config.json + model.safetensors, in fp16 when
// asked; the weights are copied deferred, as above.
ckpt::Snapshot snapshot_model(const model::EncoderClassifier& model, int64_t step, bool fp16,
                              const nlohmann::json& extra, ckpt::BufferPool* pool);

// Restores model, optimizer, scaler, SWA average and RNG states (CPU, and CUDA when
// training there) from `dir` and returns its state.
TrainerState load_full_checkpoint(const std::filesystem::path& dir, model::EncoderClassifier& model,
                                  AdamW& optimizer, GradScaler& scaler, SwaAverage* swa,
                                  const torch::Device& device, int rank = 0);

}  // namespace enstack::train
