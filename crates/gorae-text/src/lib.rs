//! gorae-text
