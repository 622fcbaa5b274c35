"""Attribution quality: how well scores match what retraining shows.

  metrics       lds, recall_at_k, auroc on [N_train, N_test] scores (numpy / torch, float64)
  groundtruth   LDS ground truth: retrain a model on random subsets, batched (torch)

Importing this package is cheap: it imports neither submodule (groundtruth needs torch).
"""
