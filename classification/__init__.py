"""Classification: datasets (ImageNet folders, CIFAR-10 batches, synthetic), the paper's transforms,
training with `engine.Trainer`, top-1/top-5 evaluation (centre, 10-crop, multi-scale), Fig. 7 analysis."""
