"""flower_client: a Flower / PyTorch app, written as Flower's quickstart-pytorch writes it.

The only change from the quickstart: the data are scikit-learn's digits (8x8 images, 10 classes,
bundled with scikit-learn, nothing to download) instead of CIFAR-10 from Flower Datasets.
Nothing in this file knows about manymodels.
"""
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

DEVICE = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz', sized for 8x8 digits)"""

    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 32 * 2 * 2)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def train(net, trainloader, epochs, lr):
    """Train the model on the training set."""
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(DEVICE)), labels.to(DEVICE))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net, testloader):
    """Validate the model on the test set."""
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    net.eval()
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images.to(DEVICE))
            labels = labels.to(DEVICE)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    return loss / len(testloader), accuracy


digits = None  # Cache the dataset, as the quickstart caches its FederatedDataset


def load_data(partition_id: int, num_partitions: int, alpha: float = 0.5, batch_size: int = 32):
    """Load partition `partition_id` of the digits' training split and the shared test split.

    The training split is divided among `num_partitions` by label with a Dirichlet(alpha) draw per
    class (what flwr-datasets' DirichletPartitioner does): small alpha, few classes per partition.
    Every partition is tested on the same held-out 20 %, so accuracies compare across partitions.
    """
    global digits
    if digits is None:
        data = load_digits()
        x = torch.tensor(data.images[:, None, :, :] / 16.0, dtype=torch.float32)
        y = torch.tensor(data.target, dtype=torch.int64)
        order = np.random.default_rng(42).permutation(len(y))
        test_size = len(y) // 5
        digits = (x[order[test_size:]], y[order[test_size:]], x[order[:test_size]], y[order[:test_size]])
    x_train, y_train, x_test, y_test = digits

    rng = np.random.default_rng(42)
    while True:  # redraw until every partition holds at least 10 examples, as the partitioner does
        parts = [[] for _ in range(num_partitions)]
        for label in range(10):
            idx = rng.permutation(np.flatnonzero(y_train.numpy() == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_partitions)) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= 10:
            break
    mine = torch.tensor(sorted(parts[partition_id]))
    trainloader = DataLoader(TensorDataset(x_train[mine], y_train[mine]), batch_size=batch_size, shuffle=True)
    testloader = DataLoader(TensorDataset(x_test, y_test), batch_size=64)
    return trainloader, testloader


def get_parameters(net):
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_parameters(net, parameters):
    params_dict = zip(net.state_dict().keys(), parameters)
    state_dict = OrderedDict({k: torch.tensor(v) for k, v in params_dict})
    net.load_state_dict(state_dict, strict=True)


# Define Flower Client
class FlowerClient(NumPyClient):
    def __init__(self, net, trainloader, testloader, local_epochs, lr):
        self.net = net
        self.trainloader = trainloader
        self.testloader = testloader
        self.local_epochs = local_epochs
        self.lr = lr

    def get_parameters(self, config):
        return get_parameters(self.net)

    def fit(self, parameters, config):
        set_parameters(self.net, parameters)
        train_loss = train(self.net, self.trainloader, self.local_epochs, self.lr)
        return get_parameters(self.net), len(self.trainloader.dataset), {"train_loss": train_loss}

    def evaluate(self, parameters, config):
        set_parameters(self.net, parameters)
        loss, accuracy = test(self.net, self.testloader)
        return loss, len(self.testloader.dataset), {"accuracy": accuracy}


def client_fn(context: Context):
    """Construct a Client that will be run in a ClientApp."""
    # Read the node_config to fetch the data partition associated to this node
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    trainloader, testloader = load_data(partition_id, num_partitions)

    # Read the run_config to fetch hyperparameters relevant to this run
    local_epochs = context.run_config["local-epochs"]
    lr = context.run_config["lr"]

    # Return Client instance
    return FlowerClient(Net().to(DEVICE), trainloader, testloader, local_epochs, lr).to_client()


# Flower ClientApp
app = ClientApp(client_fn=client_fn)
