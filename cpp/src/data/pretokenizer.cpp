// The GPT-2 pre-tokenization pattern as a hand-written scanner (see
// enstack/data/pretokenizer.h). At each position the pattern's alternatives are
// tried in order, as Oniguruma does; the only backtracking one, \s+(?!\S),
// reduces to "the whitespace run minus its last character when a non-space
// follows".
#include "enstack/data/pretokenizer.h"

#include <array>

#include "enstack/data/unicode_tables.h"

namespace enstack::data {
namespace {

constexpr std::array<CharClass, 128> make_ascii_classes() {
  std::array<CharClass, 128> classes{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      classes[c] = CharClass::kLetter;
    } else if (c >= '0' && c <= '9') {
      classes[c] = CharClass::kNumber;
    } else if ((c >= 0x09 && c <= 0x0D) || c == ' ') {
      classes[c] = CharClass::kSpace;
    } else {
      classes[c] = CharClass::kOther;
    }
  }
  return classes;
}

constexpr std::array<CharClass, 128> kAsciiClasses = make_ascii_classes();

bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

struct ClassifiedChar {
  CharClass cls;
  uint32_t size;
};

ClassifiedChar char_at(std::string_view text, std::size_t pos) {
  const auto b = static_cast<unsigned char>(text[pos]);
  if (b < 0x80) return {kAsciiClasses[b], 1};
  const Utf8Char c = decode_utf8(text, pos);
  return {classify(c.code_point), c.size};
}

// End of the run of characters of class `cls` that starts at `pos`.
std::size_t run_end(std::string_view text, std::size_t pos, CharClass cls) {
  while (pos < text.size()) {
    const ClassifiedChar c = char_at(text, pos);
    if (c.cls != cls) break;
    pos += c.size;
  }
  return pos;
}

// Length of the contraction ('s 't 're 've 'm 'll 'd) at text[pos] == '\'', or 0.
std::size_t contraction_length(std::string_view text, std::size_t pos) {
  if (pos + 1 >= text.size()) return 0;
  const char a = text[pos + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= text.size()) return 0;
  const char b = text[pos + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// \s+(?!\S) | \s+ at a whitespace character.
std::size_t whitespace_end(std::string_view text, std::size_t pos) {
  std::size_t last = pos;
  std::size_t end = pos;
  while (end < text.size()) {
    const ClassifiedChar c = char_at(text, end);
    if (c.cls != CharClass::kSpace) break;
    last = end;
    end += c.size;
  }
  if (end == text.size()) return end;  // the run reaches the end: no \S follows
  if (last > pos) return last;         // leave the last space to the next piece
  return end;                          // a single space before \S: the plain \s+
}

}  // namespace

std::size_t next_piece_end(std::string_view text, std::size_t pos) {
  if (text[pos] == '\'') {
    if (const std::size_t n = contraction_length(text, pos); n > 0) return pos + n;
  }
  const ClassifiedChar c = char_at(text, pos);
  if (text[pos] == ' ' && pos + 1 < text.size()) {
    const ClassifiedChar next = char_at(text, pos + 1);
    if (next.cls != CharClass::kSpace) return run_end(text, pos + 1 + next.size, next.cls);
  }
  if (c.cls != CharClass::kSpace) return run_end(text, pos + c.size, c.cls);
  return whitespace_end(text, pos);
}

Utf8Char decode_utf8(std::string_view text, std::size_t pos) {
  constexpr Utf8Char kInvalid{kInvalidCodePoint, 1};
  const auto* s = reinterpret_cast<const unsigned char*>(text.data()) + pos;
  const std::size_t left = text.size() - pos;
  const unsigned char b0 = s[0];
  if (b0 < 0x80) return {b0, 1};
  if (b0 < 0xC2 || b0 > 0xF4) return kInvalid;
  if (b0 < 0xE0) {
    if (left < 2 || !is_continuation(s[1])) return kInvalid;
    return {(b0 & 0x1Fu) << 6 | (s[1] & 0x3Fu), 2};
  }
  if (b0 < 0xF0) {
    const unsigned char lo = b0 == 0xE0 ? 0xA0 : 0x80;  // no overlong forms
    const unsigned char hi = b0 == 0xED ? 0x9F : 0xBF;  // no surrogates
    if (left < 3 || s[1] < lo || s[1] > hi || !is_continuation(s[2])) return kInvalid;
    return {(b0 & 0x0Fu) << 12 | (s[1] & 0x3Fu) << 6 | (s[2] & 0x3Fu), 3};
  }
  const unsigned char lo = b0 == 0xF0 ? 0x90 : 0x80;  // no overlong forms
  const unsigned char hi = b0 == 0xF4 ? 0x8F : 0xBF;  // nothing above U+10FFFF
  if (left < 4 || s[1] < lo || s[1] > hi || !is_continuation(s[2]) || !is_continuation(s[3])) {
    return kInvalid;
  }
  return {(b0 & 0x07u) << 18 | (s[1] & 0x3Fu) << 12 | (s[2] & 0x3Fu) << 6 | (s[3] & 0x3Fu), 4};
}

CharClass classify(uint32_t code_point) {
  if (code_point < 0x80) return kAsciiClasses[code_point];
  if (unicode::is_white_space(code_point)) return CharClass::kSpace;
  if (unicode::is_letter(code_point)) return CharClass::kLetter;
  if (unicode::is_number(code_point)) return CharClass::kNumber;
  return CharClass::kOther;
}

void split_gpt2(std::string_view text, std::vector<std::string_view>& pieces) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = next_piece_end(text, pos);
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
}

std::vector<std::string_view> split_gpt2(std::string_view text) {
  std::vector<std::string_view> pieces;
  split_gpt2(text, pieces);
  return pieces;
}

}  // namespace enstack::data
