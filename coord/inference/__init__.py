"""Using a trained model: sampling text and scoring a corpus."""
