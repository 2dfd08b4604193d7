"""Analysis of reconstructions: resolution, segmentation, particle statistics and figures."""
