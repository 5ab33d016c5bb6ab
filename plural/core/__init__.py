"""The math and the contract: likelihoods, the Laplace step, layers, the model contract, batches, devices."""
