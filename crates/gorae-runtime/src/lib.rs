//! gorae-runtime
