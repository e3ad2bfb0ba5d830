// The GPT-2 pre-tokenizer of byte-level BPE, written by hand over UTF-8: splits
// text into the pieces that the pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// finds, exactly as the `tokenizers` ByteLevel pre-tokenizer (use_regex=true) does.
// Bytes that are not valid UTF-8 are each one character of class kOther (as
// Python's surrogateescape lone surrogates, category Cs, would be), so any byte
// sequence splits deterministically and the pieces cover it exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace enstack::data {

// Which alternative of the pattern a character can start or continue.
enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

// The code point reported for a byte that does not start a valid UTF-8 sequence.
inline constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFFu;

struct Utf8Char {
  uint32_t code_point;  // kInvalidCodePoint for an invalid byte
  uint32_t size;        // bytes, 1..4; 1 for an invalid byte
};

// Decodes the character starting at text[pos] (pos < text.size()). Strict
// UTF-8: overlong forms, surrogates, values above U+10FFFF and truncated
// sequences give {kInvalidCodePoint, 1}.
Utf8Char decode_utf8(std::string_view text, std::size_t pos);

CharClass classify(uint32_t code_point);

// End of the piece that starts at text[pos] (pos < text.size()).
std::size_t next_piece_end(std::string_view text, std::size_t pos);

// Appends the pieces of `text` to `pieces` (views into `text`): in order, none
// empty, together exactly `text`.
void split_gpt2(std::string_view text, std::vector<std::string_view>& pieces);
std::vector<std::string_view> split_gpt2(std::string_view text);

}  // namespace enstack::data
