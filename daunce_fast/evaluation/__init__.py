"""Attribution quality: how well scores match what retraining shows.

  metrics       lds, recall_at_k, auroc on [N_train, N_test] scores (numpy / torch, float64)
  groundtruth   LDS ground truth: retrain a model on random subsets, batched (torch)
  baselines     attributors to compare against on that ground truth: TRAK and explicit IF through
                dattri (optional, imported when called), exact IF, Grad-Dot (torch)

Importing this package is cheap: it imports no submodule (groundtruth and baselines need torch).
"""
