//! gorae-models
