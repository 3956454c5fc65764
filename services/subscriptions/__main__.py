from services.common.service import main
from services.subscriptions.service import setup

if __name__ == "__main__":
    main("subscriptions", setup)
