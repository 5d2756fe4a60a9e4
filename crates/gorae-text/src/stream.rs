//! [`StreamDecoder`]: turn ids into text one id at a time, never emitting half a character.
//!
//! A single token is not always whole text: byte-level BPE splits a Hangul syllable or an
//! emoji over several tokens, and SentencePiece byte fallback emits `<0xE1><0x84><0x92>`. The
//! decoder keeps a small window of ids, decodes the window, and emits only the part past what
//! it already emitted, and only once the text does not end in U+FFFD (an incomplete UTF-8
//! sequence). The window starts with the previously emitted chunk so that decoders that look
//! at context (SentencePiece's "strip the leading space of the whole text") behave as they do
//! for a full `decode()`: concatenating the pieces gives exactly `decode(all ids)` for any id
//! sequence that decodes to valid UTF-8 (see `emit` for the one invalid-byte exception).

use crate::error::TextError;
use crate::tokenizer::Tokenizer;

/// After this many ids without complete text, the trailing U+FFFD is taken to be a real
/// invalid sequence (a UTF-8 character needs at most 4 bytes) and emitted, so a model that
/// emits garbage bytes cannot make the window grow without bound.
const MAX_PENDING_IDS: usize = 8;

/// Incremental detokenizer; see the module docs.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// Ids of the last emitted chunk (context) followed by ids not yet emitted.
    window: Vec<u32>,
    /// How many ids at the start of `window` are context.
    context_len: usize,
    /// `decode(window[..context_len])`.
    context_text: String,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> StreamDecoder<'a> {
        StreamDecoder {
            tokenizer,
            skip_special,
            window: Vec::new(),
            context_len: 0,
            context_text: String::new(),
        }
    }

    /// Adds one id; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TextError> {
        self.window.push(id);
        let text = self.tokenizer.decode(&self.window, self.skip_special)?;
        let pending = self.window.len() - self.context_len;
        if text.len() <= self.context_text.len() {
            return Ok(None);
        }
        if text.ends_with('\u{FFFD}') && pending < MAX_PENDING_IDS {
            return Ok(None);
        }
        self.emit(text).map(Some)
    }

    /// Emits whatever is still held back (possibly ending in U+FFFD if the ids really end in
    /// an incomplete character) and resets the decoder.
    pub fn flush(&mut self) -> Result<Option<String>, TextError> {
        let text = self.tokenizer.decode(&self.window, self.skip_special)?;
        let out = if text.len() > self.context_text.len() {
            Some(self.emit(text)?)
        } else {
            None
        };
        self.window.clear();
        self.context_len = 0;
        self.context_text.clear();
        Ok(out)
    }

    /// Returns the part of `text` past the context and makes the pending ids the new context.
    fn emit(&mut self, text: String) -> Result<String, TextError> {
        let new = match text.strip_prefix(self.context_text.as_str()) {
            Some(rest) => rest.to_string(),
            // Decoding more ids can rewrite earlier text only for invalid UTF-8 in a
            // byte-fallback run: HF's ByteFallback turns a whole run of `<0xHH>` tokens into
            // U+FFFD when any byte of it is invalid, including characters we already emitted.
            // Emitted text cannot be taken back, so skip as many characters as the context had
            // and go on; `decode()` would show U+FFFD where the stream showed the valid prefix.
            None => {
                let skip = self.context_text.chars().count();
                text.chars().skip(skip).collect()
            }
        };
        self.window.drain(..self.context_len);
        self.context_len = self.window.len();
        self.context_text = self.tokenizer.decode(&self.window, self.skip_special)?;
        Ok(new)
    }
}
