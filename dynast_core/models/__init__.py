"""Neural network modules: DynaST generator and discriminator, StyA2K (VGG encoder, A2K, decoder)."""
