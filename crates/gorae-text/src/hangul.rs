//! Counting Korean output: throughput in Hangul syllables per second says more about a Korean
//! model's speed than tokens per second, because tokenizers differ several-fold in how many tokens
//! one syllable costs (`shared/fixtures/text/README.md`: 0.87 to 2.9 tokens per syllable).

/// The precomposed Hangul syllable block, 가 (U+AC00) to 힣 (U+D7A3): every modern syllable.
/// Conjoining jamo (U+1100..) and compatibility jamo (U+3130..) are letters, not syllables, and
/// are not counted, so a decomposed (NFD) syllable counts zero.
pub const SYLLABLES: std::ops::RangeInclusive<char> = '\u{AC00}'..='\u{D7A3}';

/// The number of precomposed Hangul syllables in `text`.
pub fn hangul_syllables(text: &str) -> usize {
    text.chars().filter(|c| SYLLABLES.contains(c)).count()
}

/// Streaming counter for generated text, fed piece by piece.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyllableCounter {
    pub syllables: usize,
}

impl SyllableCounter {
    pub fn push(&mut self, piece: &str) {
        self.syllables += hangul_syllables(piece);
    }

    /// Syllables per second over `secs`; `None` when no syllable was seen (the text is not
    /// Korean, so the figure would say nothing) or no time passed.
    pub fn per_second(&self, secs: f64) -> Option<f64> {
        (self.syllables > 0 && secs > 0.0).then(|| self.syllables as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_precomposed_syllables() {
        assert_eq!(hangul_syllables(""), 0);
        assert_eq!(hangul_syllables("Hello, world"), 0);
        // Both ends of the block.
        assert_eq!(hangul_syllables("가힣"), 2);
        // Spaces, punctuation, digits and Latin letters between syllables are not counted.
        assert_eq!(hangul_syllables("서울에서 부산까지 KTX로 2시간 30분."), 12);
        // U+ABFF and U+D7A4 lie just outside the block.
        assert_eq!(hangul_syllables("\u{ABFF}\u{D7A4}"), 0);
        // Jamo: compatibility ㅎㅎ and the conjoining (NFD) spelling of 한 are letters only.
        assert_eq!(hangul_syllables("ㅎㅎ"), 0);
        assert_eq!(hangul_syllables("\u{1112}\u{1161}\u{11AB}"), 0);
        // Hanja and Japanese kana are not Hangul.
        assert_eq!(hangul_syllables("大韓民國 ひらがな"), 0);
    }

    #[test]
    fn counter_accumulates_pieces_and_reports_rate_only_for_korean() {
        let mut c = SyllableCounter::default();
        for piece in ["안녕", "하세요", "! ", "Hi"] {
            c.push(piece);
        }
        assert_eq!(c.syllables, 5);
        assert_eq!(c.per_second(2.0), Some(2.5));
        assert_eq!(c.per_second(0.0), None);
        let mut e = SyllableCounter::default();
        e.push("English only");
        assert_eq!(e.per_second(1.0), None);
    }
}
