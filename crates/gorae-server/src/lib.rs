//! gorae-server
