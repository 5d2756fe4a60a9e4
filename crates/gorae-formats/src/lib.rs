//! gorae-formats
