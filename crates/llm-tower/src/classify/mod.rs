//! One failure vocabulary for every layer.
