// Loading of byte-level BPE tokenizers (see enstack/data/bpe_tokenizer.h): a
// tokenizers tokenizer.json, or vocab.json + merges.txt with the transformers
// files beside them (special_tokens_map.json, tokenizer_config.json,
// added_tokens.json). Every malformed or unsupported input is a DataError.
// Encoding is in bpe_tokenizer.cpp.
#include <algorithm>
#include <array>
#include <charconv>
#include <map>

#include <nlohmann/json.hpp>

#include "bpe_tokenizer_impl.h"
#include "enstack/data/bpe_tokenizer.h"
#include "enstack/util/error.h"
#include "enstack/util/files.h"
#include "enstack/util/hash.h"

namespace enstack::data {

using bpe_detail::AddedToken;
using bpe_detail::byte_strings;
using bpe_detail::MergeRule;

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using Impl = BpeTokenizer::Impl;

json read_json(const fs::path& path) {
  json j = json::parse(util::read_file<DataError>(path), nullptr, /*allow_exceptions=*/false);
  ENSTACK_CHECK(!j.is_discarded(), DataError, "'", path.string(),
                "' is not valid JSON, so the tokenizer cannot be loaded; re-download or re-save it.");
  return j;
}

json read_optional_json(const fs::path& path) { return fs::exists(path) ? read_json(path) : json(); }

std::pair<std::string, std::string> split_merge(std::string_view line, const std::string& where) {
  const std::size_t space = line.find(' ');
  ENSTACK_CHECK(space != std::string_view::npos && line.find(' ', space + 1) == std::string_view::npos,
                DataError, where, ": the merge '", line, "' is not two tokens separated by one space; ",
                "the merges file is corrupted: re-download it.");
  return {std::string(line.substr(0, space)), std::string(line.substr(space + 1))};
}

void read_merges_txt(const fs::path& path, Impl& impl) {
  const std::string text = util::read_file<DataError>(path);
  std::size_t line_no = 0;
  for (std::size_t pos = 0; pos < text.size();) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.starts_with("#version")) continue;
    impl.merge_pairs.push_back(split_merge(line, path.string() + ":" + std::to_string(line_no)));
  }
}

void read_vocab(const json& vocab, Impl& impl, const std::string& where) {
  ENSTACK_CHECK(vocab.is_object(), DataError, where, ": the vocabulary is not a JSON object of token -> id; ",
                "re-download the tokenizer files.");
  for (const auto& [token, value] : vocab.items()) {
    const auto id = value.get<int32_t>();
    ENSTACK_CHECK(id >= 0, DataError, where, ": token '", token, "' has the negative id ", id, "; re-download it.");
    impl.vocab.emplace(token, id);
  }
}

void build_merges(Impl& impl, const std::string& where) {
  for (std::size_t rank = 0; rank < impl.merge_pairs.size(); ++rank) {
    const auto& [a, b] = impl.merge_pairs[rank];
    auto ia = impl.vocab.find(a), ib = impl.vocab.find(b), inew = impl.vocab.find(a + b);
    ENSTACK_CHECK(ia != impl.vocab.end() && ib != impl.vocab.end() && inew != impl.vocab.end(), DataError, where,
                  ": merge ", rank + 1, " ('", a, "' '", b, "') uses a token missing from the vocabulary; the ",
                  "vocabulary and merges do not belong together: take both from the same model.");
    // A repeated pair takes its last rank, as tokenizers' HashMap insert does.
    impl.merges.insert_or_assign(bpe_detail::pair_key(ia->second, ib->second),
                                 MergeRule{static_cast<uint32_t>(rank), inew->second});
  }
}

int32_t find_id(const Impl& impl, const std::string& content) {
  for (const AddedToken& t : impl.added) {
    if (t.content == content) return t.id;
  }
  auto it = impl.vocab.find(content);
  return it == impl.vocab.end() ? -1 : it->second;
}

void read_bpe_model(const json& model, Impl& impl, const std::string& where) {
  const std::string type = model.value("type", "BPE");
  ENSTACK_CHECK(type == "BPE", DataError, where, " holds a ", type, " model; enstack reads byte-level BPE ",
                "tokenizer.json files here (RoBERTa, CodeBERT, GraphCodeBERT, UniXcoder). For a SentencePiece ",
                "model, pass its .model file.");
  read_vocab(model.at("vocab"), impl, where);
  for (const json& m : model.at("merges")) {
    impl.merge_pairs.push_back(m.is_string() ? split_merge(m.get<std::string>(), where)
                                             : std::make_pair(m.at(0).get<std::string>(), m.at(1).get<std::string>()));
  }
  const bool affixes = model.value("continuing_subword_prefix", json()).is_string() &&
                       !model["continuing_subword_prefix"].get<std::string>().empty();
  const bool suffix = model.value("end_of_word_suffix", json()).is_string() &&
                      !model["end_of_word_suffix"].get<std::string>().empty();
  const bool dropout = model.value("dropout", json()).is_number() && model["dropout"].get<double>() > 0;
  ENSTACK_CHECK(!affixes && !suffix && !dropout, DataError, where, ": BPE with continuing_subword_prefix, ",
                "end_of_word_suffix or dropout is not the byte-level BPE of the RoBERTa family and is not supported.");
  if (model.value("unk_token", json()).is_string()) {
    const std::string unk = model["unk_token"].get<std::string>();
    auto it = impl.vocab.find(unk);
    ENSTACK_CHECK(it != impl.vocab.end(), DataError, where, ": the unk_token '", unk, "' is not in the vocabulary; ",
                  "the file is inconsistent: re-save it with the tokenizers library.");
    impl.model_unk = it->second;
  }
  impl.fuse_unk = model.value("fuse_unk", false);
  impl.ignore_merges = model.value("ignore_merges", false);
  // byte_fallback only acts on bytes missing from the vocabulary; byte-level vocabularies have all 256.
  const bool all_bytes = std::all_of(byte_strings().begin(), byte_strings().end(),
                                     [&](const std::string& b) { return impl.vocab.contains(b); });
  ENSTACK_CHECK(!model.value("byte_fallback", false) || all_bytes, DataError, where, ": byte_fallback with a ",
                "vocabulary that lacks some of the 256 byte symbols is not supported.");
}

void read_pre_tokenizer(const json& pre, Impl& impl, const std::string& where) {
  const json* byte_level = &pre;
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.at("pretokenizers").size() == 1) {
    byte_level = &pre["pretokenizers"][0];
  }
  ENSTACK_CHECK(byte_level->is_object() && byte_level->value("type", "") == "ByteLevel", DataError, where,
                ": the pre_tokenizer is ", pre.dump().substr(0, 200), "; enstack supports the ByteLevel ",
                "pre-tokenizer of the RoBERTa family only.");
  impl.add_prefix_space = byte_level->value("add_prefix_space", false);
  impl.use_regex = byte_level->value("use_regex", true);
}

int32_t template_special_id(const json& proc, const json& item) {
  const std::string name = item.at("SpecialToken").at("id").get<std::string>();
  const json& ids = proc.at("special_tokens").at(name).at("ids");
  return ids.size() == 1 ? ids[0].get<int32_t>() : -1;
}

// <s> ... </s> ids from the post-processor; false when it does not frame sequences.
bool read_framing(const json& proc, Impl& impl, const std::string& where) {
  if (!proc.is_object()) return false;
  const std::string type = proc.value("type", "");
  if (type == "Sequence") {
    for (const json& p : proc.at("processors")) {
      if (read_framing(p, impl, where)) return true;
    }
    return false;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    impl.bos = proc.at("cls").at(1).get<int32_t>();
    impl.eos = proc.at("sep").at(1).get<int32_t>();
    return true;
  }
  if (type != "TemplateProcessing") return false;
  const json& single = proc.at("single");
  const bool framed = single.size() == 3 && single[0].contains("SpecialToken") && single[1].contains("Sequence") &&
                      single[2].contains("SpecialToken");
  if (framed) impl.bos = template_special_id(proc, single[0]), impl.eos = template_special_id(proc, single[2]);
  ENSTACK_CHECK(framed && impl.bos >= 0 && impl.eos >= 0, DataError, where, ": the template ", single.dump(),
                " is not '<s> $A </s>' with one id per special token, which is what enstack's models take.");
  return true;
}

AddedToken read_added_token(const json& j, const Impl& impl, bool special) {
  AddedToken t;
  t.content = j.at("content").get<std::string>();
  t.special = j.value("special", special);
  t.lstrip = j.value("lstrip", false);
  t.rstrip = j.value("rstrip", false);
  t.single_word = j.value("single_word", false);
  t.normalized = j.value("normalized", !t.special);
  auto it = impl.vocab.find(t.content);  // tokenizers resolves the id by content first
  t.id = it != impl.vocab.end() ? it->second : j.value("id", -1);
  return t;
}

void read_tokenizer_json(const json& root, Impl& impl, const std::string& where) {
  read_bpe_model(root.at("model"), impl, where);
  const json normalizer = root.value("normalizer", json());
  ENSTACK_CHECK(normalizer.is_null() || (normalizer.value("type", "") == "Sequence" &&
                                         normalizer.value("normalizers", json::array()).empty()),
                DataError, where, ": the normalizer ", normalizer.dump().substr(0, 200), " is not supported; ",
                "the RoBERTa family uses none.");
  read_pre_tokenizer(root.value("pre_tokenizer", json()), impl, where);
  for (const json& t : root.value("added_tokens", json::array())) {
    impl.added.push_back(read_added_token(t, impl, true));
    ENSTACK_CHECK(impl.added.back().id >= 0, DataError, where, ": the added token '", impl.added.back().content,
                  "' has no id; re-save the file with the tokenizers library.");
  }
  if (!read_framing(root.value("post_processor", json()), impl, where)) {
    impl.bos = find_id(impl, "<s>");
    impl.eos = find_id(impl, "</s>");
  }
  const json padding = root.value("padding", json());
  const bool pad_given = padding.is_object() && padding.contains("pad_id");
  impl.pad = pad_given ? padding["pad_id"].get<int32_t>() : find_id(impl, "<pad>");
  impl.unk = impl.model_unk >= 0 ? impl.model_unk : find_id(impl, "<unk>");
}

// transformers' special-token roles and their RoBERTa defaults (<mask> takes the space before it).
struct Role {
  const char* key;
  const char* content;
  bool lstrip;
};
constexpr Role kRoles[] = {{"bos_token", "<s>", false},  {"eos_token", "</s>", false}, {"unk_token", "<unk>", false},
                           {"sep_token", "</s>", false}, {"pad_token", "<pad>", false}, {"cls_token", "<s>", false},
                           {"mask_token", "<mask>", true}};

// A role's value in special_tokens_map.json / tokenizer_config.json: "<s>" or {"content": "<s>", ...}.
AddedToken role_token(const json& value, AddedToken t) {
  if (value.is_string()) {
    t.content = value.get<std::string>();
  } else if (value.is_object()) {
    t.content = value.at("content").get<std::string>();
    t.lstrip = value.value("lstrip", t.lstrip);
    t.rstrip = value.value("rstrip", t.rstrip);
    t.single_word = value.value("single_word", t.single_word);
    t.normalized = value.value("normalized", t.normalized);
  }
  return t;
}

int32_t parse_id(const std::string& text, const std::string& where) {
  int32_t id = -1;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), id);
  ENSTACK_CHECK(error == std::errc() && end == text.data() + text.size() && id >= 0, DataError, where,
                ": '", text, "' is not a token id; the file is corrupted: re-download it.");
  return id;
}

// Added tokens of a vocab.json directory, by content. A token's id is the one
// given, else its vocab.json id, else its added_tokens.json id; tokens with no
// id are left out, as they cannot be encoded.
class SideTokens {
 public:
  SideTokens(const Impl& impl, json extra) : impl_(impl), extra_(std::move(extra)) {}
  void add(AddedToken t, int32_t id = -1) {
    auto it = impl_.vocab.find(t.content);
    if (id < 0) id = it != impl_.vocab.end() ? it->second : extra_.is_object() ? extra_.value(t.content, -1) : -1;
    t.id = id;
    if (id >= 0 && !t.content.empty()) tokens_[t.content] = std::move(t);
  }
  void add_extra() {  // added_tokens.json: plain (not special) added tokens
    if (!extra_.is_object()) return;
    for (const auto& [content, id] : extra_.items()) {
      if (!tokens_.contains(content)) add(AddedToken{content, -1, false, false, false, false, true});
    }
  }
  std::vector<AddedToken> sorted_by_id() const {
    std::vector<AddedToken> out;
    for (const auto& [content, t] : tokens_) out.push_back(t);
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
    return out;
  }

 private:
  const Impl& impl_;
  const json extra_;
  std::map<std::string, AddedToken> tokens_;
};

// The transformers side files next to vocab.json: special_tokens_map.json and
// tokenizer_config.json (roles, additional_special_tokens, added_tokens_decoder,
// add_prefix_space) and added_tokens.json.
void read_side_files(const fs::path& dir, Impl& impl) {
  const json map = read_optional_json(dir / "special_tokens_map.json");
  const json config = read_optional_json(dir / "tokenizer_config.json");
  SideTokens tokens(impl, read_optional_json(dir / "added_tokens.json"));
  std::map<std::string, std::string> roles;  // role -> content
  for (const Role& r : kRoles) {
    AddedToken t{r.content, -1, true, r.lstrip};
    for (const json* source : {&map, &config}) {
      if (source->is_object() && source->contains(r.key)) t = role_token((*source)[r.key], t);
    }
    roles[r.key] = t.content;
    tokens.add(t);
  }
  for (const json* source : {&map, &config}) {
    if (!source->is_object()) continue;
    for (const json& v : source->value("additional_special_tokens", json::array())) tokens.add(role_token(v, {}));
  }
  tokens.add_extra();
  if (config.is_object() && config.contains("added_tokens_decoder")) {
    for (const auto& [id, t] : config["added_tokens_decoder"].items()) {
      tokens.add(read_added_token(t, impl, true), parse_id(id, (dir / "tokenizer_config.json").string()));
    }
  }
  impl.added = tokens.sorted_by_id();
  if (config.is_object()) impl.add_prefix_space = config.value("add_prefix_space", false);
  impl.bos = find_id(impl, roles["cls_token"]);
  impl.eos = find_id(impl, roles["sep_token"]);
  impl.pad = find_id(impl, roles["pad_token"]);
  impl.unk = find_id(impl, roles["unk_token"]);
}

void hash_string(util::Fnv1a64& h, std::string_view s) {
  h.update_value(static_cast<uint64_t>(s.size()));
  h.update(s);
}


// A digest of everything that decides the ids, independent of file formats and order.
std::string identity_of(const Impl& impl) {
  std::vector<std::pair<int32_t, const std::string*>> by_id;
  for (const auto& [token, id] : impl.vocab) by_id.emplace_back(id, &token);
  std::sort(by_id.begin(), by_id.end(), [](const auto& x, const auto& y) {
    return x.first != y.first ? x.first < y.first : *x.second < *y.second;
  });
  util::Fnv1a64 h;
  hash_string(h, "enstack-bpe-1");
  for (const auto& [id, token] : by_id) {
    h.update_value(id);
    hash_string(h, *token);
  }
  for (const auto& [a, b] : impl.merge_pairs) {
    hash_string(h, a);
    hash_string(h, b);
  }
  for (const AddedToken& t : impl.added) {
    h.update_value(t.id);
    hash_string(h, t.content);
    h.update_value(std::array<bool, 5>{t.special, t.lstrip, t.rstrip, t.single_word, t.normalized});
  }
  h.update_value(std::array<int32_t, 5>{impl.bos, impl.eos, impl.pad, impl.unk, impl.model_unk});
  h.update_value(std::array<bool, 4>{impl.fuse_unk, impl.ignore_merges, impl.add_prefix_space, impl.use_regex});
  return h.hex();
}

}  // namespace

void BpeTokenizer::Impl::finish(const std::string& where) {
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(byte_strings()[b]);
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
  }
  build_merges(*this, where);
  ENSTACK_CHECK(bos >= 0 && eos >= 0, DataError, where, ": no <s>/</s> tokens to frame sequences with ",
                "(cls/sep of the post-processor or special_tokens_map.json); the tokenizer is incomplete.");
  raw_matcher.build(added, false);
  normalized_matcher.build(added, true);
  for (const auto& [token, id] : vocab) vocab_size = std::max<int64_t>(vocab_size, int64_t{id} + 1);
  for (const AddedToken& t : added) vocab_size = std::max<int64_t>(vocab_size, int64_t{t.id} + 1);
  identity = identity_of(*this);
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_files(const fs::path& vocab_json, const fs::path& merges_txt) {
  auto impl = std::make_unique<Impl>();
  const std::string where = vocab_json.string();
  try {
    read_vocab(read_json(vocab_json), *impl, where);
    read_merges_txt(merges_txt, *impl);
    read_side_files(vocab_json.parent_path(), *impl);
  } catch (const json::exception& e) {
    throw DataError(util::str_cat(where, " or a file beside it is malformed (", e.what(), "); re-download them."));
  }
  impl->finish(where);
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(impl)));
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(const fs::path& tokenizer_json) {
  auto impl = std::make_unique<Impl>();
  const std::string where = tokenizer_json.string();
  try {
    read_tokenizer_json(read_json(tokenizer_json), *impl, where);
  } catch (const json::exception& e) {
    throw DataError(util::str_cat(where, " is not a tokenizers tokenizer.json (", e.what(), "); re-save it."));
  }
  impl->finish(where);
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(impl)));
}

}  // namespace enstack::data
